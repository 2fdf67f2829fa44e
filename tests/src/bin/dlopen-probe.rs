//! Loads a dynamic module the way Envoy does (`dlopen` with lazy binding) in a
//! process that exports none of Envoy's callbacks, and prints what its
//! `envoy_dynamic_module_on_program_init` answers: `null`, or the ABI version.
//! Used by tests/tests/native.rs to show the module refuses an Envoy without its ABI.

use std::ffi::{c_char, CStr, CString};

fn main() {
    let Some(path) = std::env::args().nth(1) else {
        eprintln!("usage: dlopen-probe <module.so>");
        std::process::exit(2);
    };
    let Ok(path) = CString::new(path) else {
        std::process::exit(2);
    };
    // SAFETY: a NUL-terminated path; the handle is used only in this process.
    let handle = unsafe { libc::dlopen(path.as_ptr(), libc::RTLD_LAZY | libc::RTLD_LOCAL) };
    if handle.is_null() {
        // SAFETY: dlerror returns a NUL-terminated message after a failure.
        let error = unsafe { CStr::from_ptr(libc::dlerror()) };
        eprintln!("dlopen failed: {}", error.to_string_lossy());
        std::process::exit(1);
    }
    // SAFETY: looks up a symbol by its NUL-terminated name.
    let init = unsafe { libc::dlsym(handle, c"envoy_dynamic_module_on_program_init".as_ptr()) };
    if init.is_null() {
        eprintln!("no envoy_dynamic_module_on_program_init");
        std::process::exit(1);
    }
    // SAFETY: the ABI's signature of the init hook.
    let init: extern "C" fn() -> *const c_char = unsafe { std::mem::transmute(init) };
    let version = init();
    if version.is_null() {
        println!("null");
    } else {
        // SAFETY: the module answers a NUL-terminated string.
        println!("{}", unsafe { CStr::from_ptr(version) }.to_string_lossy());
    }
}
