//! Fuzzes the whole front end (parse, check, IR and plan printing) with arbitrary
//! text: nothing may panic. Run with `cargo +nightly fuzz run front_end` from `fuzz/`
//! (seed the corpus with `examples/*.flow`).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let c = flow_compiler::compile_str("/nonexistent/fuzz.flow", &text);
    for d in &c.diagnostics {
        let _ = d.render(&c.sources, 80);
    }
    if let Some(p) = &c.program {
        let _ = p.to_string();
        let _ = flow_compiler::plan::plan(p).to_string();
    }
});
