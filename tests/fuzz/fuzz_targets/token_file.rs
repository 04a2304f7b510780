#![no_main]

#[allow(dead_code)]
#[path = "../drivers/server.rs"]
mod drivers;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    drivers::token_file(data);
});
