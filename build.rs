//! Puts libtorch's lib folder on the rpath of every binary and test, so `cargo run`,
//! `cargo test` and `target/release/*` work without LD_LIBRARY_PATH (torch-sys adds none).
fn main() {
    println!("cargo:rerun-if-env-changed=LIBTORCH");
    if let Ok(dir) = std::env::var("LIBTORCH") {
        println!("cargo:rustc-link-arg=-Wl,-rpath,{dir}/lib");
    }
    if std::env::var("CARGO_FEATURE_CUDA").is_ok() {
        // torch-sys links torch_cuda only when present; force it so kernels register.
        println!("cargo:rustc-link-arg=-Wl,--no-as-needed,-ltorch_cuda,--as-needed");
    }
}
