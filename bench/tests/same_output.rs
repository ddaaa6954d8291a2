//! The benchmark compares like with like: on all 1,000 messages, the native
//! baseline and the WebAssembly component give identical results.

use tbgw_bench::{dataset, native::Native};

#[test]
fn native_and_wasm_agree_on_every_message() {
    let messages = dataset::messages(1000);
    let native = Native::new(dataset::CONFIG).expect("config");
    let (_rt, converter) = dataset::wasm_converter();
    let mut worker = converter.worker();
    let mut dropped = 0;
    for chunk in messages.chunks(256) {
        let wasm = worker.try_convert(chunk).expect("call");
        for (msg, wasm) in chunk.iter().zip(wasm) {
            let wasm = wasm.expect("wasm converted");
            let native = native.convert(msg).expect("native converted");
            assert_eq!(wasm, native, "{}", String::from_utf8_lossy(&msg.payload));
            assert_eq!(wasm.updates.len(), 1);
            dropped += wasm.dropped.len();
        }
    }
    // The data set exercises the dropped-value paths too (null and missing fields).
    assert!(dropped > 50, "only {dropped} dropped values");
}
