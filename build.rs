//! Puts libtorch's lib folder on the rpath of every binary and test, so `cargo run`,
//! `cargo test` and `target/release/*` work without LD_LIBRARY_PATH (torch-sys adds none),
//! and compiles the C++ shim over libtorch's distributed engine (`csrc/dist.cpp`, see
//! `msclip::dist`) against libtorch's headers and gloo's (which the wheel lacks; the setup
//! script puts Debian's `libgloo-dev` headers in `$LIBTORCH/gloo-include`).
use std::path::PathBuf;

fn main() {
    println!("cargo:rerun-if-env-changed=LIBTORCH");
    println!("cargo:rerun-if-env-changed=MSCLIP_GLOO_INCLUDE");
    println!("cargo:rerun-if-changed=csrc/dist.cpp");
    let libtorch = std::env::var("LIBTORCH").map(PathBuf::from).unwrap_or_else(|_| PathBuf::from("libtorch"));
    println!("cargo:rustc-link-arg=-Wl,-rpath,{}/lib", libtorch.display());
    if std::env::var("CARGO_FEATURE_CUDA").is_ok() {
        // torch-sys links torch_cuda only when present; force it so kernels register.
        println!("cargo:rustc-link-arg=-Wl,--no-as-needed,-ltorch_cuda,--as-needed");
    }
    let gloo = std::env::var("MSCLIP_GLOO_INCLUDE").map(PathBuf::from).unwrap_or_else(|_| libtorch.join("gloo-include"));
    if !gloo.join("gloo/algorithm.h").exists() {
        panic!(
            "gloo headers not found in {} (they come from Debian's libgloo-dev): run scripts/setup-libtorch.sh, \
             or set MSCLIP_GLOO_INCLUDE to a folder holding gloo/algorithm.h",
            gloo.display()
        );
    }
    cc::Build::new()
        .cpp(true)
        .file("csrc/dist.cpp")
        .flag("-std=c++17")
        .define("USE_C10D_GLOO", None)
        .define("_GLIBCXX_USE_CXX11_ABI", "1")
        .include(libtorch.join("include"))
        .include(libtorch.join("include/torch/csrc/api/include"))
        .include(&gloo)
        .warnings(false)
        .compile("msclip_dist");
    // The shim's symbols resolve against libtorch_cpu and c10 (never -ltorch: the wheel's
    // libtorch.so needs libtorch_cuda).
    println!("cargo:rustc-link-search=native={}/lib", libtorch.display());
    println!("cargo:rustc-link-lib=dylib=torch_cpu");
    println!("cargo:rustc-link-lib=dylib=c10");
}
