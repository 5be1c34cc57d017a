//! Sets the `zonit` binary's entry point to `zonit_entry` (src/sys/bare.rs),
//! which lets a zone's re-executed init skip the C library's start-up.

fn main() {
    println!("cargo::rustc-link-arg-bin=zonit=-Wl,--entry=zonit_entry");
    println!("cargo::rerun-if-changed=build.rs");
}
