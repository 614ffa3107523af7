/* Demo page for the Deep Complex Networks service: plain JavaScript, no dependencies, no build step.
 *
 * Talks to the service on the same origin only:
 *   POST /classify   (multipart "file", repeatable)  -> top-5 bars per image
 *   POST /transcribe (multipart "file")               -> piano roll + notes + audio cursor;
 *                    the MIDI / npz downloads re-POST the same file with ?format=midi|npz
 *   GET  /models, /readyz                             -> model cards, status badge
 *
 * The piano roll is a canvas; what it draws is also exposed in the DOM for tests and assistive
 * technology: the canvas carries data-notes (JSON) and its geometry (data-* attributes, CSS pixels),
 * the pitch axis is made of DOM labels, and the detected notes are listed in a table.
 */
(function () {
  "use strict";

  const $ = (id) => document.getElementById(id);
  const NOTE_NAMES = ["C", "C♯", "D", "D♯", "E", "F", "F♯", "G", "G♯", "A", "A♯", "B"];
  const ASCII_NAMES = ["C", "C#", "D", "D#", "E", "F", "F#", "G", "G#", "A", "A#", "B"];
  const isBlackKey = (m) => [1, 3, 6, 8, 10].includes(((m % 12) + 12) % 12);

  /** MIDI number -> scientific pitch name (60 -> "C4"). */
  function noteName(midi, ascii) {
    const names = ascii ? ASCII_NAMES : NOTE_NAMES;
    return names[((midi % 12) + 12) % 12] + (Math.floor(midi / 12) - 1);
  }

  // ------------------------------------------------------------------ HTTP

  /** Turns a failed response into a message a person can act on. */
  function describeError(status, body, headers) {
    let detail = "";
    if (body && typeof body === "object" && "detail" in body) {
      const d = body.detail;
      if (typeof d === "string") detail = d;
      else if (Array.isArray(d)) {
        // FastAPI validation errors: [{loc: [...], msg: "..."}]
        detail = d.map((e) => (e && e.msg ? (e.loc ? e.loc.filter((x) => x !== "body" && x !== "query").join(".") + ": " : "") + e.msg : JSON.stringify(e))).join("; ");
      } else detail = JSON.stringify(d);
    } else if (typeof body === "string") {
      detail = body.trim().slice(0, 300);
    }
    const retry = headers ? headers.get("Retry-After") : null;
    let title;
    switch (status) {
      case 0: title = "Could not reach the service: the connection failed or was closed (server down, network " +
        "error, or an upload far over the size limit)."; break;
      case 400: title = "The file could not be processed."; break;
      case 404: title = "Not found."; break;
      case 413: title = "The upload is too large."; break;
      case 415: title = "Unsupported file format."; break;
      case 422: title = "The request was not valid."; break;
      case 429:
      case 503: title = "The service is busy" + (retry ? ` — please try again in ${retry} s.` : " — please try again shortly."); break;
      case 504: title = "The request took too long and timed out on the server."; break;
      default: title = status >= 500 ? `Server error (HTTP ${status}).` : `Request failed (HTTP ${status}).`;
    }
    return { status, title, detail, retryAfter: retry };
  }

  /** Minimal header accessor over XHR's raw header string. */
  function xhrHeaders(xhr) {
    return { get: (name) => xhr.getResponseHeader(name) };
  }

  /**
   * POST a FormData with XMLHttpRequest (fetch has no upload progress).
   * Resolves {ok, status, body, headers}; body is parsed JSON, text or a Blob (responseType "blob").
   */
  function postForm(url, form, { onUploadProgress, onUploaded, responseType } = {}) {
    return new Promise((resolve) => {
      const xhr = new XMLHttpRequest();
      xhr.open("POST", url);
      xhr.responseType = responseType === "blob" ? "blob" : "text";
      xhr.setRequestHeader("Accept", responseType === "blob" ? "*/*" : "application/json");
      if (xhr.upload) {
        xhr.upload.onprogress = (e) => onUploadProgress && onUploadProgress(e.lengthComputable ? e.loaded / e.total : null);
        xhr.upload.onload = () => onUploaded && onUploaded();
      }
      xhr.onerror = () => resolve({ ok: false, status: 0, body: null, headers: xhrHeaders(xhr) });
      xhr.ontimeout = xhr.onerror;
      xhr.onload = async () => {
        const headers = xhrHeaders(xhr);
        const ok = xhr.status >= 200 && xhr.status < 300;
        const type = (xhr.getResponseHeader("Content-Type") || "").toLowerCase();
        let body = xhr.response;
        try {
          if (xhr.responseType === "blob") {
            if (!ok || type.includes("json")) {
              const text = await body.text();
              body = type.includes("json") ? JSON.parse(text) : text;
            }
          } else if (type.includes("json")) {
            body = JSON.parse(xhr.responseText);
          }
        } catch (err) {
          /* keep the raw body */
        }
        resolve({ ok, status: xhr.status, body, headers });
      };
      xhr.send(form);
    });
  }

  async function getJSON(url) {
    try {
      const r = await fetch(url, { headers: { Accept: "application/json" }, cache: "no-store" });
      let body = null;
      try { body = await r.json(); } catch (err) { /* not JSON */ }
      return { ok: r.ok, status: r.status, body, headers: r.headers };
    } catch (err) {
      return { ok: false, status: 0, body: null, headers: null };
    }
  }

  // ------------------------------------------------------------------ small UI helpers

  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    if (attrs) {
      for (const [k, v] of Object.entries(attrs)) {
        if (v === undefined || v === null || v === false) continue;
        if (k === "class") node.className = v;
        else if (k === "text") node.textContent = v;
        else if (k === "style") node.setAttribute("style", v);
        else node.setAttribute(k, v === true ? "" : v);
      }
    }
    for (const c of children.flat()) {
      if (c === null || c === undefined || c === false) continue;
      node.append(c instanceof Node ? c : document.createTextNode(String(c)));
    }
    return node;
  }

  function showError(box, err) {
    box.replaceChildren(
      el("strong", { class: "error-title", text: err.title }),
      err.detail ? el("span", { class: "error-detail", text: sentence(err.detail) }) : null
    );
    box.dataset.status = String(err.status);
    box.hidden = false;
  }

  /** Server detail as a sentence: trailing full stop added, case kept (it often starts with a file name). */
  function sentence(text) {
    // "limit of 1000000 bytes" -> "limit of 1000000 bytes (976.6 KB)"
    const t = String(text).trim().replace(/\b(\d{4,}) bytes\b/g, (m, n) => `${m} (${fmtBytes(Number(n))})`);
    return t && !/[.!?…)]$/.test(t) ? t + "." : t;
  }

  function clearError(box) {
    box.hidden = true;
    box.replaceChildren();
    delete box.dataset.status;
  }

  function setProgress(prefix, { visible, fraction, text }) {
    const row = $(prefix + "-progress");
    const bar = $(prefix + "-progress-bar");
    row.hidden = !visible;
    if (!visible) return;
    if (fraction === null || fraction === undefined) bar.removeAttribute("value"); // indeterminate
    else bar.value = Math.round(fraction * 100);
    $(prefix + "-progress-text").textContent = text || "";
    row.dataset.phase = text || "";
  }

  const fmtPct = (p) => (p * 100 >= 99.95 ? "100" : p * 100 >= 10 ? (p * 100).toFixed(1) : (p * 100).toFixed(2)) + "%";
  const fmtBytes = (n) => (n < 1024 ? n + " B" : n < 1048576 ? (n / 1024).toFixed(1) + " KB" : (n / 1048576).toFixed(1) + " MB");

  /** Makes a drop zone + button + hidden file input behave as one control. */
  function wireDropzone(zone, input, button, onFiles) {
    button.addEventListener("click", () => input.click());
    input.addEventListener("change", () => {
      if (input.files && input.files.length) onFiles(Array.from(input.files));
      input.value = ""; // allow picking the same file again
    });
    zone.addEventListener("dragover", (e) => {
      e.preventDefault();
      e.dataTransfer.dropEffect = "copy";
      zone.classList.add("dragging");
    });
    zone.addEventListener("dragleave", (e) => {
      if (!zone.contains(e.relatedTarget)) zone.classList.remove("dragging");
    });
    zone.addEventListener("drop", (e) => {
      e.preventDefault();
      zone.classList.remove("dragging");
      const files = Array.from((e.dataTransfer && e.dataTransfer.files) || []);
      if (files.length) onFiles(files);
    });
  }

  // Dropping a file outside a drop zone must not navigate away from the page.
  window.addEventListener("dragover", (e) => e.preventDefault());
  window.addEventListener("drop", (e) => e.preventDefault());

  // ------------------------------------------------------------------ tabs

  function setupTabs() {
    const tabs = Array.from(document.querySelectorAll('[role="tab"]'));
    function select(tab, focus) {
      for (const t of tabs) {
        const on = t === tab;
        t.setAttribute("aria-selected", on ? "true" : "false");
        t.tabIndex = on ? 0 : -1;
        $(t.getAttribute("aria-controls")).hidden = !on;
      }
      if (focus) tab.focus();
      const name = tab.id.replace(/^tab-/, "");
      if (location.hash !== "#" + name) history.replaceState(null, "", "#" + name);
      if (name === "audio") requestAnimationFrame(() => roll.redraw());
    }
    tabs.forEach((tab, i) => {
      tab.addEventListener("click", () => select(tab, false));
      tab.addEventListener("keydown", (e) => {
        let j = null;
        if (e.key === "ArrowRight") j = (i + 1) % tabs.length;
        else if (e.key === "ArrowLeft") j = (i - 1 + tabs.length) % tabs.length;
        else if (e.key === "Home") j = 0;
        else if (e.key === "End") j = tabs.length - 1;
        if (j !== null) { e.preventDefault(); select(tabs[j], true); }
      });
    });
    const initial = tabs.find((t) => "#" + t.id.replace(/^tab-/, "") === location.hash);
    if (initial) select(initial, false);
  }

  // ------------------------------------------------------------------ image tab

  function setupImages() {
    const input = $("image-input");
    const results = $("image-results");
    const errorBox = $("image-error");
    let busy = false;

    async function classify(files) {
      if (busy) return;
      busy = true;
      clearError(errorBox);
      results.replaceChildren();
      $("image-model").hidden = true;
      $("image-pick").disabled = true;
      const form = new FormData();
      for (const f of files) form.append("file", f, f.name);
      const total = files.reduce((s, f) => s + f.size, 0);
      const label = files.length === 1 ? files[0].name : `${files.length} images`;
      setProgress("image", { visible: true, fraction: 0, text: `Uploading ${label} (${fmtBytes(total)})…` });
      const r = await postForm("/classify", form, {
        onUploadProgress: (p) => setProgress("image", { visible: true, fraction: p, text: `Uploading ${label}… ${p === null ? "" : Math.round(p * 100) + "%"}` }),
        onUploaded: () => setProgress("image", { visible: true, fraction: null, text: "Classifying…" }),
      });
      setProgress("image", { visible: false });
      $("image-pick").disabled = false;
      busy = false;
      if (!r.ok || !r.body || !Array.isArray(r.body.results)) {
        showError(errorBox, r.ok ? { status: r.status, title: "Unexpected response from the service.", detail: "" } : describeError(r.status, r.body, r.headers));
        return;
      }
      const modelLine = $("image-model");
      modelLine.textContent = r.body.model ? `Model: ${r.body.model}` : "";
      modelLine.hidden = !r.body.model;
      results.replaceChildren(...r.body.results.map((res, i) => renderImageResult(res, files[i])));
    }

    function renderImageResult(res, file) {
      const probs = Object.entries(res.probabilities || {}).sort((a, b) => b[1] - a[1]).slice(0, 5);
      if (!probs.length && res.label !== undefined) probs.push([res.label, res.confidence || 0]);
      const thumb = el("img", { class: "thumb", alt: `Uploaded image ${res.filename || ""}`, width: "96", height: "96" });
      if (file) {
        const url = URL.createObjectURL(file);
        thumb.src = url;
        thumb.addEventListener("load", () => URL.revokeObjectURL(url), { once: true });
        thumb.addEventListener("error", () => { URL.revokeObjectURL(url); thumb.classList.add("broken"); }, { once: true });
      }
      const list = el("ol", { class: "bars", "aria-label": `Top ${probs.length} classes` },
        probs.map(([cls, p], k) => el("li", { class: "bar-row" + (k === 0 ? " top" : ""), "data-class": cls, "data-probability": String(p) },
          el("span", { class: "bar-label", text: cls }),
          el("span", { class: "bar-track", role: "meter", "aria-valuemin": "0", "aria-valuemax": "1", "aria-valuenow": String(p), "aria-label": `${cls} ${fmtPct(p)}` },
            el("span", { class: "bar-fill", style: `width:${Math.max(0, Math.min(1, p)) * 100}%` })),
          el("span", { class: "bar-value", text: fmtPct(p) }))));
      return el("li", { class: "image-card", "data-filename": res.filename || "", "data-label": res.label || "" },
        thumb,
        el("div", { class: "image-card-body" },
          el("h3", { class: "image-name", title: res.filename || "", text: res.filename || "(unnamed)" }),
          el("p", { class: "image-top" }, el("span", { class: "image-top-label", text: res.label }),
            res.confidence !== undefined ? ` · ${fmtPct(res.confidence)}` : ""),
          list));
    }

    wireDropzone($("image-drop"), input, $("image-pick"), classify);
  }

  // ------------------------------------------------------------------ piano roll

  const RULER_H = 24;   // CSS px of the time ruler above the rows
  const MIN_PX_PER_SEC = 20;
  const MAX_CANVAS_PX = 16000; // device pixels, well inside every browser's canvas limits
  const MAX_PROB_COLUMNS = 8192; // frames per pixel column of the probability layer, at most

  const roll = {
    data: null,        // transcription JSON
    pxPerSec: 0,       // current horizontal scale
    zoom: 1,           // relative to the fit-to-width scale
    rowH: 6,
    geometry: null,

    set(data) {
      this.data = data;
      this.zoom = 1;
      this.redraw();
    },

    redraw() {
      const d = this.data;
      const scroll = $("roll-scroll");
      if (!d || !scroll.offsetParent) return; // nothing to draw or not visible
      const canvas = $("roll-canvas");
      const pitches = d.pitches || [];
      const times = d.times || [];
      const nP = pitches.length;
      const nF = times.length;
      const frameDt = d.frame_rate ? 1 / d.frame_rate : nF > 1 ? times[1] - times[0] : 0.01;
      const duration = Math.max(d.duration || 0, nF ? times[nF - 1] + frameDt : 0, 0.01);
      const pMin = nP ? Math.min(...pitches) : 60;
      const pMax = nP ? Math.max(...pitches) : 72;
      const nRows = pMax - pMin + 1;
      this.rowH = Math.max(4, Math.min(18, Math.floor(560 / nRows)));
      const dpr = window.devicePixelRatio || 1;
      const avail = Math.max(120, scroll.clientWidth);
      const fit = avail / duration;
      const maxPx = MAX_CANVAS_PX / dpr / duration;
      this.pxPerSec = Math.min(maxPx, Math.max(MIN_PX_PER_SEC, fit) * this.zoom);
      const width = Math.max(1, Math.round(duration * this.pxPerSec));
      const height = RULER_H + nRows * this.rowH;
      for (const c of [canvas, $("roll-cursor")]) {
        c.width = Math.round(width * dpr);
        c.height = Math.round(height * dpr);
        c.style.width = width + "px";
        c.style.height = height + "px";
      }
      const ctx = canvas.getContext("2d");
      ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
      const yOf = (pitch) => RULER_H + (pMax - pitch) * this.rowH; // top edge of the pitch's row

      // Background rows: black-key rows darker, a line at every C.
      ctx.fillStyle = "#141a24";
      ctx.fillRect(0, 0, width, height);
      for (let m = pMin; m <= pMax; m++) {
        ctx.fillStyle = isBlackKey(m) ? "#10151d" : "#19202c";
        ctx.fillRect(0, yOf(m), width, this.rowH);
        if (m % 12 === 0) {
          ctx.fillStyle = "#2c3646";
          ctx.fillRect(0, yOf(m) + this.rowH - 1, width, 1);
        }
      }

      // Probabilities: one pixel per (frame, pitch) in an offscreen canvas (built once per transcription),
      // scaled up without smoothing. Frame f is centred at times[f]; its cell spans [t - dt/2, t + dt/2).
      const prob = this.probabilityImage(d, pitches, pMax, nRows);
      if (prob) {
        ctx.imageSmoothingEnabled = false;
        const x0 = ((times[0] || 0) - frameDt / 2) * this.pxPerSec;
        const framesDrawn = prob.width * (prob.framesPerColumn || 1);
        ctx.drawImage(prob, 0, 0, prob.width, nRows, x0, RULER_H, framesDrawn * frameDt * this.pxPerSec, nRows * this.rowH);
      }

      // Note events: outlined boxes on their pitch rows.
      const notes = Array.isArray(d.notes) ? d.notes : [];
      ctx.lineWidth = 1.5;
      for (const n of notes) {
        if (n.pitch < pMin || n.pitch > pMax) continue;
        const x = n.onset * this.pxPerSec;
        const w = Math.max(2, (n.offset - n.onset) * this.pxPerSec);
        const y = yOf(n.pitch);
        ctx.fillStyle = "rgba(255, 159, 28, 0.55)";
        ctx.fillRect(x, y + 0.5, w, this.rowH - 1);
        ctx.strokeStyle = "#ffb347";
        ctx.strokeRect(x + 0.75, y + 0.75, w - 1.5, this.rowH - 1.5);
      }

      // Time ruler.
      ctx.fillStyle = "#0c1118";
      ctx.fillRect(0, 0, width, RULER_H);
      const steps = [0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 15, 30, 60, 120, 300];
      const step = steps.find((s) => s * this.pxPerSec >= 64) || 600;
      ctx.font = "11px system-ui, sans-serif";
      ctx.textBaseline = "middle";
      for (let t = 0, i = 0; t <= duration + 1e-9; t = ++i * step) {
        const x = Math.round(t * this.pxPerSec) + 0.5;
        ctx.fillStyle = "#5b6b82";
        ctx.fillRect(x - 0.5, RULER_H - 8, 1, 8);
        ctx.fillStyle = "rgba(120,140,170,0.18)";
        ctx.fillRect(x - 0.5, RULER_H, 1, height - RULER_H);
        ctx.fillStyle = "#aab6c8";
        if (x + 30 < width || i === 0) ctx.fillText(formatTime(t, step), x + 3, RULER_H / 2 - 1);
      }
      // minor ticks
      ctx.fillStyle = "#3a4658";
      for (let t = step / 4, i = 1; t <= duration; t = ++i * step / 4) {
        if (i % 4) ctx.fillRect(Math.round(t * this.pxPerSec), RULER_H - 4, 1, 4);
      }

      this.geometry = { pMin, pMax, rowH: this.rowH, rulerH: RULER_H, pxPerSec: this.pxPerSec, width, height, duration, dpr };
      Object.assign(canvas.dataset, {
        pitchMin: String(pMin), pitchMax: String(pMax), rowHeight: String(this.rowH), rulerHeight: String(RULER_H),
        pxPerSecond: String(this.pxPerSec), duration: String(duration), dpr: String(dpr),
        notes: JSON.stringify(notes.map((n) => ({ pitch: n.pitch, name: noteName(n.pitch, true), onset: n.onset, offset: n.offset, confidence: n.confidence }))),
      });
      canvas.setAttribute("aria-label", `Piano roll, ${duration.toFixed(2)} s, ${notes.length} note${notes.length === 1 ? "" : "s"}` +
        (notes.length ? ": " + summarizeNotes(notes) : ""));
      // Pitches the model is confident about somewhere (labelled on the axis even without a note event).
      const strong = this.strongCache && this.strongCache.data === d ? this.strongCache.set : new Set();
      if (!(this.strongCache && this.strongCache.data === d) && Array.isArray(d.probabilities)) {
        for (const row of d.probabilities) {
          if (!row) continue;
          for (let j = 0; j < nP; j++) if (row[j] >= 0.5) strong.add(pitches[j]);
        }
      }
      this.strongCache = { data: d, set: strong };
      this.drawAxis(pMin, pMax, new Set(notes.map((n) => n.pitch)), strong);
      this.drawCursor();
    },

    /** Offscreen canvas of the probabilities, cached per transcription. Long recordings are reduced
     *  (max over groups of frames) to at most MAX_PROB_COLUMNS columns, inside every browser's canvas limits. */
    probabilityImage(d, pitches, pMax, nRows) {
      if (this.probCache && this.probCache.data === d) return this.probCache.canvas;
      const probs = Array.isArray(d.probabilities) ? d.probabilities : [];
      const nF = probs.length;
      const nP = pitches.length;
      let canvas = null;
      if (nF && nP) {
        const group = Math.ceil(nF / MAX_PROB_COLUMNS);
        const cols = Math.ceil(nF / group);
        canvas = document.createElement("canvas");
        canvas.framesPerColumn = group;
        canvas.width = cols;
        canvas.height = nRows;
        const octx = canvas.getContext("2d");
        const img = octx.createImageData(cols, nRows);
        const px = img.data;
        for (let f = 0; f < nF; f++) {
          const row = probs[f];
          if (!row) continue;
          const col = Math.floor(f / group);
          for (let j = 0; j < nP; j++) {
            const p = row[j] || 0;
            if (p < 0.01) continue;
            const k = ((pMax - pitches[j]) * cols + col) * 4;
            const a = Math.round(255 * Math.min(1, p));
            if (a > px[k + 3]) { // light blue, opacity follows probability
              px[k] = 86; px[k + 1] = 182; px[k + 2] = 255; px[k + 3] = a;
            }
          }
        }
        octx.putImageData(img, 0, 0);
      }
      this.probCache = { data: d, canvas };
      return canvas;
    },

    drawAxis(pMin, pMax, notePitches, strongPitches) {
      const axis = $("roll-axis");
      axis.style.height = RULER_H + (pMax - pMin + 1) * this.rowH + "px";
      const labelAll = this.rowH >= 12;
      const labels = [];
      for (let m = pMin; m <= pMax; m++) {
        const key = el("span", { class: "key" + (isBlackKey(m) ? " black" : "") + (notePitches.has(m) ? " active" : ""),
          style: `top:${RULER_H + (pMax - m) * this.rowH}px;height:${this.rowH}px` });
        labels.push(key);
        // Label every C, every pitch with a note or a high probability, and every row when rows are tall enough.
        if (labelAll || m % 12 === 0 || notePitches.has(m) || strongPitches.has(m)) {
          const h = Math.max(this.rowH, 12);
          labels.push(el("span", { class: "axis-label" + (notePitches.has(m) ? " active" : "") + (m % 12 === 0 ? " c" : ""),
            "data-pitch": String(m), title: `MIDI ${m}`,
            style: `top:${RULER_H + (pMax - m) * this.rowH + this.rowH / 2 - h / 2}px;height:${h}px;line-height:${h}px`,
            text: noteName(m) }));
        }
      }
      axis.replaceChildren(...labels);
    },

    /** Playback cursor on the overlay canvas (the roll itself is never redrawn for it). */
    drawCursor() {
      const g = this.geometry;
      const c = $("roll-cursor");
      if (!g) return;
      const ctx = c.getContext("2d");
      ctx.setTransform(g.dpr, 0, 0, g.dpr, 0, 0);
      ctx.clearRect(0, 0, g.width, g.height);
      const t = $("audio-player").currentTime || 0;
      const x = Math.round(t * g.pxPerSec) + 0.5;
      ctx.fillStyle = "#ff4d6d";
      ctx.fillRect(x - 1, 0, 2, g.height);
      ctx.beginPath();
      ctx.moveTo(x - 6, 0); ctx.lineTo(x + 6, 0); ctx.lineTo(x, 8); ctx.closePath();
      ctx.fill();
      c.dataset.time = t.toFixed(3);
      return x;
    },
  };

  function formatTime(t, step) {
    if (step >= 60) return `${Math.floor(t / 60)}:${String(Math.round(t % 60)).padStart(2, "0")}`;
    const digits = step >= 1 ? 0 : Number.isInteger(Math.round(step * 1000) / 100) ? 1 : 2;
    return t.toFixed(digits) + " s";
  }

  function summarizeNotes(notes) {
    const names = [...new Set(notes.map((n) => n.pitch))].sort((a, b) => a - b).map((p) => noteName(p, true));
    return names.slice(0, 24).join(", ") + (names.length > 24 ? ", …" : "");
  }

  // ------------------------------------------------------------------ audio tab

  function setupAudio() {
    const input = $("audio-input");
    const errorBox = $("audio-error");
    const player = $("audio-player");
    const scroll = $("roll-scroll");
    let current = null; // {file, url, params}
    let busy = false;

    function params() {
      const q = new URLSearchParams();
      for (const id of ["onset-threshold", "frame-threshold", "min-note-length"]) {
        const inp = $(id);
        if (inp.value !== "" && inp.checkValidity()) q.set(inp.name, inp.value);
      }
      return q;
    }

    async function transcribe(files) {
      if (busy) return;
      const file = files[0];
      if (!file) return;
      busy = true;
      clearError(errorBox);
      $("audio-result").hidden = true;
      player.pause();
      $("audio-pick").disabled = true;
      $("audio-rerun").disabled = true;
      const form = new FormData();
      form.append("file", file, file.name);
      const q = params();
      setProgress("audio", { visible: true, fraction: 0, text: `Uploading ${file.name} (${fmtBytes(file.size)})…` });
      const r = await postForm("/transcribe?" + q.toString(), form, {
        onUploadProgress: (p) => setProgress("audio", { visible: true, fraction: p, text: `Uploading ${file.name}… ${p === null ? "" : Math.round(p * 100) + "%"}` }),
        onUploaded: () => setProgress("audio", { visible: true, fraction: null, text: "Transcribing…" }),
      });
      setProgress("audio", { visible: false });
      $("audio-pick").disabled = false;
      busy = false;
      if (!r.ok || !r.body || typeof r.body !== "object" || !Array.isArray(r.body.pitches)) {
        showError(errorBox, r.ok ? { status: r.status, title: "Unexpected response from the service.", detail: "" } : describeError(r.status, r.body, r.headers));
        $("audio-rerun").disabled = !current;
        return;
      }
      if (!current || current.file !== file) {
        if (current) URL.revokeObjectURL(current.url);
        current = { file, url: URL.createObjectURL(file) };
        player.src = current.url;
      }
      current.params = q;
      $("audio-rerun").disabled = false;
      showTranscription(r.body, file);
    }

    function showTranscription(d, file) {
      const notes = Array.isArray(d.notes) ? d.notes : [];
      $("audio-result").hidden = false;
      $("download-status").textContent = "";
      const bits = [];
      if (d.model) bits.push(`Model: ${d.model}`);
      if (typeof d.duration === "number") bits.push(`${d.duration.toFixed(2)}\u00a0s`);
      if (d.frame_rate) bits.push(`${Number(d.frame_rate).toFixed(1)}\u00a0frames/s`);
      if (d.sample_rate) bits.push(`${d.sample_rate}\u00a0Hz`);
      bits.push(`${notes.length} note${notes.length === 1 ? "" : "s"}` + (notes.length ? ` (${summarizeNotes(notes)})` : ""));
      $("audio-summary").textContent = `${file.name} — ` + bits.join(" · ");
      const tbody = $("notes-table").tBodies[0];
      tbody.replaceChildren(...notes.map((n) => el("tr", { "data-pitch": String(n.pitch) },
        el("td", { text: noteName(n.pitch) }), el("td", { text: String(n.pitch) }),
        el("td", { text: Number(n.onset).toFixed(3) }), el("td", { text: Number(n.offset).toFixed(3) }),
        el("td", { text: n.confidence !== undefined ? Number(n.confidence).toFixed(2) : "" }))));
      $("notes-summary").textContent = `Detected notes (${notes.length})`;
      scroll.scrollLeft = 0;
      roll.set(d);
    }

    async function download(format) {
      if (!current) return;
      const status = $("download-status");
      const q = new URLSearchParams(current.params || params());
      q.set("format", format);
      const form = new FormData();
      form.append("file", current.file, current.file.name);
      const btn = $(format === "midi" ? "download-midi" : "download-npz");
      btn.disabled = true;
      status.textContent = `Preparing ${format === "midi" ? "MIDI" : "npz"} file…`;
      const r = await postForm("/transcribe?" + q.toString(), form, { responseType: "blob" });
      btn.disabled = false;
      if (!r.ok || !(r.body instanceof Blob)) {
        const err = describeError(r.status, r.body, r.headers);
        status.textContent = "";
        showError(errorBox, { ...err, title: `Download failed: ${err.title}` });
        return;
      }
      const base = current.file.name.replace(/\.[^.]+$/, "") || "transcription";
      const name = base + (format === "midi" ? ".mid" : ".npz");
      const url = URL.createObjectURL(r.body);
      const a = el("a", { href: url, download: name, class: "visually-hidden" });
      document.body.append(a);
      a.click();
      a.remove();
      setTimeout(() => URL.revokeObjectURL(url), 10000);
      status.textContent = `Downloaded ${name} (${fmtBytes(r.body.size)}).`;
    }

    $("download-midi").addEventListener("click", () => download("midi"));
    $("download-npz").addEventListener("click", () => download("npz"));
    $("audio-rerun").addEventListener("click", () => current && transcribe([current.file]));
    $("zoom-in").addEventListener("click", () => zoomBy(2));
    $("zoom-out").addEventListener("click", () => zoomBy(0.5));

    function zoomBy(f) {
      if (!roll.data) return;
      const centre = (scroll.scrollLeft + scroll.clientWidth / 2) / (roll.pxPerSec || 1);
      roll.zoom = Math.max(0.25, Math.min(64, roll.zoom * f));
      roll.redraw();
      scroll.scrollLeft = centre * roll.pxPerSec - scroll.clientWidth / 2;
    }

    // Playback cursor follows the audio; keep it in view while playing.
    let raf = 0;
    function tick() {
      const x = roll.drawCursor();
      if (x !== undefined && !player.paused) {
        if (x < scroll.scrollLeft || x > scroll.scrollLeft + scroll.clientWidth - 24) scroll.scrollLeft = Math.max(0, x - 24);
      }
      raf = player.paused ? 0 : requestAnimationFrame(tick);
    }
    for (const ev of ["play", "seeked", "timeupdate", "pause", "ended"]) {
      player.addEventListener(ev, () => { if (!raf) raf = requestAnimationFrame(tick); });
    }

    // Click (or keyboard) on the roll seeks the audio.
    $("roll-cursor").addEventListener("click", (e) => {
      if (!roll.geometry || !player.src) return;
      const rect = e.currentTarget.getBoundingClientRect();
      player.currentTime = Math.max(0, (e.clientX - rect.left) / roll.geometry.pxPerSec);
    });
    scroll.addEventListener("keydown", (e) => {
      if (e.key === " " || e.key === "k") {
        e.preventDefault();
        if (!player.src) return;
        if (player.paused) player.play().catch(() => {});
        else player.pause();
      } else if (e.key === "Home") {
        e.preventDefault();
        scroll.scrollLeft = 0;
        if (player.src) player.currentTime = 0;
      }
    });

    let resizeTimer = 0;
    window.addEventListener("resize", () => {
      clearTimeout(resizeTimer);
      resizeTimer = setTimeout(() => roll.redraw(), 150);
    });

    wireDropzone($("audio-drop"), input, $("audio-pick"), transcribe);
  }

  // ------------------------------------------------------------------ model cards + status

  const HIDDEN_KEYS = new Set([]);

  function renderValue(key, v, depth) {
    if (v === null || v === undefined) return el("span", { class: "muted", text: "—" });
    if (Array.isArray(v)) {
      if (v.every((x) => x === null || typeof x !== "object")) {
        if (/pitch/i.test(key) && v.length > 2 && v.every((x) => Number.isInteger(x))) {
          return el("span", { text: `${v.length} pitches, ${noteName(Math.min(...v))}–${noteName(Math.max(...v))} (MIDI ${Math.min(...v)}–${Math.max(...v)})` });
        }
        const shown = v.slice(0, 20).map(String).join(", ");
        return el("span", { text: shown + (v.length > 20 ? `, … (${v.length} in all)` : "") });
      }
      return el("div", {}, v.slice(0, 20).map((x) => renderValue(key, x, depth + 1)));
    }
    if (typeof v === "object") {
      if (depth > 3) return el("code", { text: JSON.stringify(v).slice(0, 200) });
      return renderDl(v, depth + 1);
    }
    if (typeof v === "number") {
      const text = Number.isInteger(v) ? (Math.abs(v) >= 10000 ? v.toLocaleString("en-US") : String(v)) : String(Number(v.toPrecision(5)));
      return el("span", { text });
    }
    const s = String(v);
    if (/sha256|hash/i.test(key) && s.length > 16) return el("code", { class: "hash", title: s, text: s.slice(0, 16) + "…" });
    return el("span", { text: s });
  }

  const prettyKey = (k) => String(k).replace(/_/g, " ");

  function renderDl(obj, depth) {
    const dl = el("dl", { class: "kv" });
    for (const [k, v] of Object.entries(obj)) {
      if (HIDDEN_KEYS.has(k)) continue;
      dl.append(el("dt", { text: prettyKey(k) }), el("dd", { "data-key": k }, renderValue(k, v, depth)));
    }
    return dl;
  }

  /** Accepts {"models": [...]}, {name: {...}, ...}, [...] or a single model object. */
  function modelEntries(body) {
    if (Array.isArray(body)) return body.map((m, i) => [m && (m.name || m.task || m.kind) || `model ${i + 1}`, m]);
    if (body && typeof body === "object") {
      if (Array.isArray(body.models)) return modelEntries(body.models);
      if (body.models && typeof body.models === "object") return modelEntries(body.models);
      const vals = Object.entries(body);
      if (vals.length && vals.every(([, v]) => v && typeof v === "object" && !Array.isArray(v))) return vals;
      return [[body.name || "model", body]];
    }
    return [];
  }

  async function loadModels() {
    const box = $("model-cards");
    const errorBox = $("models-error");
    const r = await getJSON("/models");
    if (!r.ok) {
      box.replaceChildren();
      showError(errorBox, describeError(r.status, r.body, r.headers));
      return;
    }
    clearError(errorBox);
    const entries = modelEntries(r.body);
    if (!entries.length) {
      box.replaceChildren(el("p", { class: "hint", text: "No models reported." }));
      return;
    }
    // Empty note-detection fields mean "the model's calibrated default": show those values as placeholders.
    const decoding = entries.map(([, m]) => m && m.decoding).find((d) => d && typeof d === "object");
    if (decoding) {
      for (const [id, key] of [["onset-threshold", "onset_threshold"], ["frame-threshold", "frame_threshold"],
                               ["min-note-length", "min_note_length"]]) {
        if (typeof decoding[key] === "number") $(id).placeholder = `${decoding[key]} (model default)`;
      }
    }
    box.replaceChildren(...entries.map(([key, m]) => {
      const title = (m && (m.name || m.model)) || key;
      const rest = Object.fromEntries(Object.entries(m || {}).filter(([k]) => k !== "name"));
      return el("article", { class: "model-card", "data-model": String(key) },
        el("h3", { text: String(title) }),
        title !== key ? el("p", { class: "muted", text: String(key) }) : null,
        renderDl(rest, 0));
    }));
  }

  async function pollReady() {
    const badge = $("service-status");
    const r = await getJSON("/readyz");
    let state, text;
    if (r.ok) { state = "ready"; text = "service ready"; }
    else if (r.status === 0) { state = "down"; text = "service unreachable"; }
    else {
      state = "loading";
      const d = r.body && r.body.detail;
      text = "service not ready" + (typeof d === "string" && d ? `: ${d}` : "");
    }
    badge.dataset.state = state;
    badge.textContent = text;
    if (state !== "ready") {
      pollReady.sawNotReady = true;
      setTimeout(pollReady, 5000);
    } else if (pollReady.sawNotReady) {
      pollReady.sawNotReady = false;
      loadModels(); // models finished loading since the page opened
    }
  }

  // ------------------------------------------------------------------ start

  function start() {
    setupTabs();
    setupImages();
    setupAudio();
    loadModels();
    pollReady();
    // For tests and the curious: what the roll last drew.
    window.dcnDemo = { roll, noteName };
  }

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", start);
  else start();
})();
