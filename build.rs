//! Puts libtorch's lib folder on the rpath of every binary and test, so `cargo run`,
//! `cargo test` and `target/release/*` work without LD_LIBRARY_PATH (torch-sys adds none),
//! and compiles the C++ shims: `csrc/dist.cpp` over libtorch's distributed engine (see
//! `msclip::distributed`) and `csrc/ops.cpp` (ATen's fused AdamW, see `msclip::train::optim`), against libtorch's headers and gloo's (which the wheel lacks; the setup
//! script puts Debian's `libgloo-dev` headers in `$LIBTORCH/gloo-include`).
use std::path::PathBuf;

fn main() {
    println!("cargo:rerun-if-env-changed=LIBTORCH");
    println!("cargo:rerun-if-env-changed=MSCLIP_GLOO_INCLUDE");
    println!("cargo:rerun-if-changed=csrc/dist.cpp");
    println!("cargo:rerun-if-changed=csrc/ops.cpp");
    println!("cargo:rerun-if-changed=csrc/shim_error.h");
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
    let mut build = cc::Build::new();
    build
        .cpp(true)
        .file("csrc/dist.cpp")
        .file("csrc/ops.cpp")
        .flag("-std=c++17")
        .define("USE_C10D_GLOO", None)
        .define("_GLIBCXX_USE_CXX11_ABI", "1")
        .include(libtorch.join("include"))
        .include(libtorch.join("include/torch/csrc/api/include"))
        .include(&gloo)
        .warnings(false);
    println!("cargo:rerun-if-changed=csrc/dist_nccl.cpp");
    println!("cargo:rerun-if-changed=csrc/dist_group.h");
    println!("cargo:rerun-if-env-changed=MSCLIP_NCCL_INCLUDE");
    println!("cargo:rerun-if-env-changed=MSCLIP_CUDA_INCLUDE");
    if std::env::var("CARGO_FEATURE_CUDA").is_ok() {
        // ProcessGroupNCCL (its code is in libtorch_cuda): nccl.h and the CUDA runtime headers
        // from the nvidia-* wheels next to torch in the same site-packages.
        // MSCLIP_CUDA_INCLUDE: a ':'-separated list (the cu13 runtime wheel lacks crt/ and CCCL's
        // nv/target; scripts/gpu/build.sh adds the nvidia-cuda-cccl wheel and triton's copy).
        let site = libtorch.parent().map(PathBuf::from).unwrap_or_default();
        let nccl = std::env::var("MSCLIP_NCCL_INCLUDE").map(PathBuf::from).unwrap_or_else(|_| site.join("nvidia/nccl/include"));
        let cuda: Vec<PathBuf> = match std::env::var("MSCLIP_CUDA_INCLUDE") {
            Ok(list) => std::env::split_paths(&list).collect(),
            Err(_) => vec![site.join("nvidia/cu13/include"), site.join("triton/backends/nvidia/include")],
        };
        let has = |file: &str| cuda.iter().any(|d| d.join(file).exists());
        if !nccl.join("nccl.h").exists() {
            panic!("--features cuda: nccl.h not found in {} (set MSCLIP_NCCL_INCLUDE)", nccl.display());
        }
        for file in ["cuda_runtime_api.h", "crt/host_config.h", "nv/target"] {
            if !has(file) {
                panic!("--features cuda: {file} not found in MSCLIP_CUDA_INCLUDE = {cuda:?} (see scripts/gpu/build.sh)");
            }
        }
        build.file("csrc/dist_nccl.cpp").define("USE_C10D_NCCL", None).define("USE_CUDA", None).include(nccl);
        for d in &cuda {
            build.include(d);
        }
    }
    build.compile("msclip_dist");
    // The shim's symbols resolve against libtorch_cpu and c10 (never -ltorch: the wheel's
    // libtorch.so needs libtorch_cuda).
    println!("cargo:rustc-link-search=native={}/lib", libtorch.display());
    println!("cargo:rustc-link-lib=dylib=torch_cpu");
    println!("cargo:rustc-link-lib=dylib=c10");
}
