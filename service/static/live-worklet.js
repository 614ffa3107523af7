// AudioWorklet for the Live tab: the first input channel in chunks of `chunk` samples (about 20 ms), posted to
// the page as Float32Array buffers (transferred, not copied), which the page sends as they are over the WebSocket.
class DcnCapture extends AudioWorkletProcessor {
  constructor(options) {
    super();
    this.chunk = (options.processorOptions && options.processorOptions.chunk) || 960;
    this.buf = new Float32Array(this.chunk);
    this.n = 0;
  }
  process(inputs) {
    const ch = inputs[0] && inputs[0][0];
    if (ch) {
      let i = 0;
      while (i < ch.length) {
        const take = Math.min(ch.length - i, this.chunk - this.n);
        this.buf.set(ch.subarray(i, i + take), this.n);
        this.n += take; i += take;
        if (this.n === this.chunk) {
          this.port.postMessage(this.buf.buffer, [this.buf.buffer]);
          this.buf = new Float32Array(this.chunk);
          this.n = 0;
        }
      }
    }
    return true;
  }
}
registerProcessor("dcn-capture", DcnCapture);
