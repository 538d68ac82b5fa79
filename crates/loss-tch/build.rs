include!("libtorch_link.rs");

fn main() {
    link_libtorch();
    compile_fused_grad_node();
}

/// Compiles `csrc/fused_grad.cpp`, the autograd node that hands a fused kernel's gradient on,
/// against the libtorch that torch-sys found (its lib directory's sibling `include/`), with the
/// flags torch-sys compiles its own C++ with. Sets `cfg(fused_grad_node)` when it did; without
/// it (a platform other than Linux and macOS), the gradient is attached with a dot product.
fn compile_fused_grad_node() {
    println!("cargo::rustc-check-cfg=cfg(fused_grad_node)");
    println!("cargo:rerun-if-changed=csrc/fused_grad.cpp");
    println!("cargo:rerun-if-env-changed=LIBTORCH_CXX11_ABI");
    let os = std::env::var("CARGO_CFG_TARGET_OS").unwrap_or_default();
    if os != "linux" && os != "macos" {
        return;
    }
    let lib = match std::env::var("DEP_TCH_LIBTORCH_LIB") {
        Ok(lib) => std::path::PathBuf::from(lib),
        Err(_) => {
            panic!("torch-sys did not report libtorch's lib directory (DEP_TCH_LIBTORCH_LIB)")
        }
    };
    let Some(root) = lib.parent() else {
        panic!("libtorch's lib directory {} has no parent", lib.display())
    };
    let include = root.join("include");
    if !include.join("torch/csrc/autograd/function.h").exists() {
        panic!(
            "libtorch's headers were not found at {} (expected beside its lib directory {})",
            include.display(),
            lib.display()
        );
    }
    let abi = std::env::var("LIBTORCH_CXX11_ABI").unwrap_or_else(|_| "1".to_owned());
    cc::Build::new()
        .cpp(true)
        .file("csrc/fused_grad.cpp")
        .include(&include)
        .include(include.join("torch/csrc/api/include"))
        .flag("-std=c++17")
        .flag(format!("-D_GLIBCXX_USE_CXX11_ABI={abi}"))
        .flag("-DGLOG_USE_GLOG_EXPORT")
        // libtorch's own headers are not warning-clean; this file is small enough to review.
        .warnings(false)
        .compile("losslab_fused_grad");
    println!("cargo:rustc-cfg=fused_grad_node");
}
