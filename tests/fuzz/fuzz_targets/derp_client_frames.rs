#![no_main]

#[allow(dead_code)]
#[path = "../drivers/derp.rs"]
mod drivers;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    drivers::client_frames(data);
});
