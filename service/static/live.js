/* Live tab: microphone -> AudioWorklet -> WebSocket /transcribe/stream (protocol 1) -> scrolling piano roll.
 *
 * The page sends float32 mono at the AudioContext's rate; the server resamples. What it draws: frame
 * probabilities as they arrive (blue) and notes from note_on to note_off (orange; open notes grow with time).
 * For tests: window.dcnLive holds the state; #live-notes lists the notes (data-pitch, data-onset), the latency
 * indicator carries data-latency (seconds), #live-status data-state (idle, connecting, listening, stopping, done,
 * error).
 */
(function () {
  "use strict";
  const $ = (id) => document.getElementById(id);
  const NAMES = ["C", "C#", "D", "D#", "E", "F", "F#", "G", "G#", "A", "A#", "B"];
  const noteName = (m) => NAMES[m % 12] + (Math.floor(m / 12) - 1);
  const SECONDS_SHOWN = 8;
  const MAX_LISTED = 60;
  const state = { ws: null, ctx: null, media: null, node: null, pitches: [], frames: [], notes: [], now: 0,
                  running: false, summary: null, latency: null, lookahead: null };

  function status(text, st) {
    const s = $("live-status");
    s.textContent = text;
    s.dataset.state = st;
  }

  function error(text) {
    const box = $("live-error");
    box.textContent = text;
    box.hidden = !text;
  }

  function thresholds() {
    const out = {};
    for (const [id, key] of [["onset-threshold", "onset_threshold"], ["frame-threshold", "frame_threshold"],
                             ["min-note-length", "min_note_length"]]) {
      const v = $(id) && $(id).value;
      if (v !== "" && v != null && !Number.isNaN(Number(v))) out[key] = Number(v);
    }
    return out;
  }

  function listNote(n) {
    const li = document.createElement("li");
    li.dataset.pitch = String(n.pitch);
    li.dataset.onset = String(n.onset);
    li.textContent = `${noteName(n.pitch)} at ${n.onset.toFixed(2)} s`;
    n.li = li;
    const ul = $("live-notes");
    ul.prepend(li);
    while (ul.children.length > MAX_LISTED) ul.lastElementChild.remove();
  }

  function onMessage(m) {
    if (m.type === "ready") {
      state.pitches = m.pitches;
      state.lookahead = m.latency.algorithmic_latency_s;
      status(`Listening (${m.model}, look-ahead ${Math.round(1000 * state.lookahead)} ms)`, "listening");
    } else if (m.type === "frames") {
      for (let i = 0; i < m.times.length; i++) state.frames.push({ t: m.times[i], p: m.probabilities[i] });
      state.now = Math.max(state.now, m.times[m.times.length - 1]);
      const cut = state.now - SECONDS_SHOWN - 1;
      while (state.frames.length && state.frames[0].t < cut) state.frames.shift();
      if (m.latency_s != null) {
        state.latency = m.latency_s;
        const lat = $("live-latency");
        lat.textContent = `${Math.round(1000 * m.latency_s)} ms`;
        lat.dataset.latency = String(m.latency_s);
        lat.dataset.level = m.latency_s < 0.5 ? "ok" : m.latency_s < 1 ? "slow" : "late";
      }
    } else if (m.type === "note_on") {
      const n = { pitch: m.pitch, onset: m.onset, offset: null };
      state.notes.push(n);
      listNote(n);
    } else if (m.type === "note_off") {
      const n = state.notes.find((x) => x.pitch === m.pitch && x.onset === m.onset && x.offset === null);
      if (n) {
        n.offset = m.offset;
        if (n.li) n.li.textContent = `${noteName(n.pitch)} at ${n.onset.toFixed(2)} s, ${(m.offset - m.onset).toFixed(2)} s`;
      }
      const cut = state.now - SECONDS_SHOWN - 1;
      state.notes = state.notes.filter((x) => x.offset === null || x.offset > cut);
    } else if (m.type === "summary") {
      state.summary = m;
      const lat = m.latency ? `, frame latency p50 ${Math.round(1000 * m.latency.p50_s)} ms, p99 ${Math.round(1000 * m.latency.p99_s)} ms` : "";
      $("live-summary").textContent = `${m.notes.length} notes in ${m.duration.toFixed(1)} s${lat}.`;
      status("Stopped", "done");
    } else if (m.type === "error") {
      error(`The server ended the stream: ${m.detail}`);
    }
  }

  function draw() {
    const canvas = $("live-canvas");
    const dpr = window.devicePixelRatio || 1;
    const w = canvas.clientWidth, h = canvas.clientHeight;
    if (canvas.width !== Math.round(w * dpr) || canvas.height !== Math.round(h * dpr)) {
      canvas.width = Math.round(w * dpr);
      canvas.height = Math.round(h * dpr);
    }
    const g = canvas.getContext("2d");
    g.setTransform(dpr, 0, 0, dpr, 0, 0);
    g.fillStyle = "#0d1117";
    g.fillRect(0, 0, w, h);
    const pmin = 21, pmax = 108, rows = pmax - pmin + 1, rh = h / rows, pps = w / SECONDS_SHOWN;
    const x = (t) => w - (state.now - t) * pps;
    g.fillStyle = "#161b22";
    for (let m = pmin; m <= pmax; m++) if ([1, 3, 6, 8, 10].includes(m % 12)) g.fillRect(0, (pmax - m) * rh, w, rh);
    const fw = state.frames.length > 1 ? (state.frames[1].t - state.frames[0].t) * pps : 2;
    for (const f of state.frames) {
      const fx = x(f.t);
      if (fx < -fw) continue;
      for (let j = 0; j < f.p.length; j++) {
        if (f.p[j] < 0.05) continue;
        g.fillStyle = `rgba(47,129,247,${Math.min(1, f.p[j])})`;
        g.fillRect(fx, (pmax - state.pitches[j]) * rh, fw + 0.5, rh);
      }
    }
    g.fillStyle = "#ff9f1c";
    for (const n of state.notes) {
      const x0 = x(n.onset), x1 = x(n.offset === null ? state.now : n.offset);
      if (x1 < 0) continue;
      g.fillRect(x0, (pmax - n.pitch) * rh + 1, Math.max(2, x1 - x0), Math.max(2, rh - 2));
    }
    g.fillStyle = "#8b949e";
    g.font = "10px sans-serif";
    for (let m = 24; m <= pmax; m += 12) g.fillText(noteName(m), 2, (pmax - m) * rh + rh);
    if (state.running) requestAnimationFrame(draw);
  }

  async function start() {
    error("");
    $("live-summary").textContent = "";
    $("live-notes").replaceChildren();
    Object.assign(state, { frames: [], notes: [], now: 0, summary: null, latency: null });
    if (!navigator.mediaDevices || !window.AudioWorkletNode) {
      error("This browser cannot capture audio here (a secure context, https or localhost, is needed).");
      return;
    }
    status("Asking for the microphone…", "connecting");
    $("live-start").disabled = true;
    try {
      state.media = await navigator.mediaDevices.getUserMedia(
        { audio: { echoCancellation: false, noiseSuppression: false, autoGainControl: false, channelCount: 1 } });
      const ctx = state.ctx = new AudioContext();
      await ctx.audioWorklet.addModule("/static/live-worklet.js");
      const source = ctx.createMediaStreamSource(state.media);
      const node = state.node = new AudioWorkletNode(ctx, "dcn-capture",
                                                     { processorOptions: { chunk: Math.round(ctx.sampleRate * 0.02) } });
      const mute = ctx.createGain();
      mute.gain.value = 0;
      source.connect(node).connect(mute).connect(ctx.destination);  // pulled by the graph, nothing audible
      const ws = state.ws = new WebSocket((location.protocol === "https:" ? "wss://" : "ws://") + location.host
                                          + "/transcribe/stream");
      ws.onopen = () => {
        ws.send(JSON.stringify({ type: "start", protocol: 1, sample_rate: ctx.sampleRate, channels: 1,
                                 format: "float32", ...thresholds() }));
        node.port.onmessage = (e) => { if (ws.readyState === WebSocket.OPEN) ws.send(e.data); };
      };
      ws.onmessage = (e) => onMessage(JSON.parse(e.data));
      ws.onclose = (e) => {
        if (e.code !== 1000 && !state.summary) error(`The stream closed (${e.code}${e.reason ? ": " + e.reason : ""}).`);
        stopCapture();
        state.running = false;
        if (!state.summary) status("Stopped", e.code === 1000 ? "done" : "error");
        $("live-start").disabled = false;
        $("live-stop").disabled = true;
      };
      state.running = true;
      $("live-stop").disabled = false;
      status("Connecting…", "connecting");
      requestAnimationFrame(draw);
    } catch (e) {
      stopCapture();
      error(`Cannot start: ${e.message || e}`);
      status("Idle", "error");
      $("live-start").disabled = false;
    }
  }

  function stopCapture() {
    if (state.node) { state.node.port.onmessage = null; state.node.disconnect(); state.node = null; }
    if (state.media) { state.media.getTracks().forEach((t) => t.stop()); state.media = null; }
    if (state.ctx) { state.ctx.close(); state.ctx = null; }
  }

  function stop() {
    $("live-stop").disabled = true;
    stopCapture();
    if (state.ws && state.ws.readyState === WebSocket.OPEN) {
      status("Finishing…", "stopping");
      state.ws.send(JSON.stringify({ type: "end" }));  // the server flushes, sends the summary, closes
    }
  }

  function setup() {
    if (!$("live-start")) return;
    $("live-start").addEventListener("click", start);
    $("live-stop").addEventListener("click", stop);
    window.dcnLive = state;
  }

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", setup);
  else setup();
})();
