"""Weight averaging of two transcribers fine-tuned from one another ("model soup", Wortsman et al. 2022).

    python scripts/average_checkpoints.py A.pt B.pt --weight 0.5 --out runs/musicnet/soup/model.pt

Writes (1 - weight) * A + weight * B for every floating-point tensor (batch-norm running statistics included;
counters come from B), each side's logit calibration folded into its output layer first, so the average is of the
models' calibrated outputs' weights, not of one raw and one calibrated head. The result is an uncalibrated model of
B's architecture and configuration: finalize, calibrate and fit velocity as for a trained one (the model cards).
Only meaningful for checkpoints on one fine-tuning path (B trained from A), whose weights stay close enough that
their average is itself a good model; the cards measure it.
"""
from __future__ import annotations

import argparse

from models.checkpoint import build_model, read_checkpoint, save_checkpoint
from training.musicnet import fold_calibration


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("a")
    ap.add_argument("b")
    ap.add_argument("--weight", type=float, default=0.5, help="share of B (0 = A, 1 = B)")
    ap.add_argument("--out", required=True)
    args = ap.parse_args(argv)
    a, b = read_checkpoint(args.a), read_checkpoint(args.b)
    if a["arch"] != b["arch"]:
        raise SystemExit(f"different architectures: {a['arch']} and {b['arch']}")
    sa, sb = fold_calibration(a["state_dict"]), fold_calibration(b["state_dict"])
    if sa.keys() != sb.keys() or any(sa[k].shape != sb[k].shape for k in sa):
        raise SystemExit("the two checkpoints' tensors differ in names or shapes")
    w = args.weight
    state = {k: (1 - w) * sa[k].float() + w * sb[k].float() if sb[k].is_floating_point() else sb[k] for k in sb}
    model = build_model(b["arch"], b["config"])
    model.load_state_dict(state)
    meta = dict(b["meta"], averaged={"a": args.a, "b": args.b, "weight_of_b": w})
    save_checkpoint(args.out, model, b["arch"], b["config"], meta)
    print(f"wrote {args.out}: {1 - w:g} x {args.a} + {w:g} x {args.b}")


if __name__ == "__main__":
    main()
