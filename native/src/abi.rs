//! The part of Envoy's dynamic-module ABI this module uses, declared by hand (the
//! ABI's Rust SDK is not published). Declared against
//! `source/extensions/dynamic_modules/abi/abi.h` at ABI "v0.1.0", which the ABI
//! guarantees compatible with the "v0.2.x" of Envoy 1.40; every callback declared
//! here is resolved from the running Envoy before the module says it is ready
//! (`resolve`), checked against the Envoy binary's exported symbols
//! (tests/tests/native.rs) and exercised by the e2e suite.

use std::ffi::{c_char, c_void};

/// What `envoy_dynamic_module_on_program_init` answers: the ABI this module was
/// written for (Envoy 1.40's is "v0.2.0").
pub const ABI_VERSION: &std::ffi::CStr = c"v0.2.0";
/// The Envoy release the declarations were checked against.
pub const ENVOY_RELEASE: &str = "1.40";

pub type EnvoyPtr = *mut c_void;
pub type ModulePtr = *const c_void;

/// A buffer the module owns, lent to Envoy for one call.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct ModuleBuffer {
    pub ptr: *const u8,
    pub length: usize,
}

impl ModuleBuffer {
    pub fn of(bytes: &[u8]) -> ModuleBuffer {
        ModuleBuffer {
            ptr: bytes.as_ptr(),
            length: bytes.len(),
        }
    }

    /// The null buffer (`set_header` with it removes the header).
    pub fn null() -> ModuleBuffer {
        ModuleBuffer {
            ptr: std::ptr::null(),
            length: 0,
        }
    }
}

/// A buffer Envoy owns, valid until the current event hook returns.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct EnvoyBuffer {
    pub ptr: *const u8,
    pub length: usize,
}

impl EnvoyBuffer {
    pub fn empty() -> EnvoyBuffer {
        EnvoyBuffer {
            ptr: std::ptr::null(),
            length: 0,
        }
    }

    /// The bytes, borrowed for the current hook (empty for a null buffer).
    ///
    /// # Safety
    /// `ptr` must be null or point to `length` bytes valid for `'a`.
    pub unsafe fn bytes<'a>(self) -> &'a [u8] {
        // SAFETY: the caller's contract.
        unsafe { slice(self.ptr, self.length) }
    }

    /// The bytes, copied (empty for a null buffer).
    ///
    /// # Safety
    /// As `bytes`.
    pub unsafe fn to_vec(self) -> Vec<u8> {
        // SAFETY: the caller's contract.
        unsafe { self.bytes() }.to_vec()
    }
}

/// `len` values at `ptr`, borrowed (empty for a null pointer).
///
/// # Safety
/// `ptr` is null or points to `len` values valid for `'a`.
pub unsafe fn slice<'a, T>(ptr: *const T, len: usize) -> &'a [T] {
    if ptr.is_null() || len == 0 {
        return &[];
    }
    // SAFETY: the caller's contract.
    unsafe { std::slice::from_raw_parts(ptr, len) }
}

/// A header pair, the module's (`ModuleHttpHeader`) or Envoy's (`EnvoyHttpHeader`).
#[repr(C)]
#[derive(Clone, Copy)]
pub struct HttpHeader {
    pub key_ptr: *const u8,
    pub key_length: usize,
    pub value_ptr: *const u8,
    pub value_length: usize,
}

impl HttpHeader {
    /// Name and value, borrowed for the current hook.
    ///
    /// # Safety
    /// Both pointers are null or point to their lengths' bytes, valid for `'a`.
    pub unsafe fn pair<'a>(&self) -> (&'a [u8], &'a [u8]) {
        // SAFETY: the caller's contract.
        unsafe {
            (
                slice(self.key_ptr, self.key_length),
                slice(self.value_ptr, self.value_length),
            )
        }
    }

    /// `size` headers as Envoy fills them in (`fill` gets room for exactly that
    /// many); `None` when it fails.
    pub fn read(
        size: usize,
        fill: impl FnOnce(*mut HttpHeader) -> bool,
    ) -> Option<Vec<HttpHeader>> {
        let mut headers = vec![HttpHeader::empty(); size];
        (size == 0 || fill(headers.as_mut_ptr())).then_some(headers)
    }

    pub fn empty() -> HttpHeader {
        HttpHeader {
            key_ptr: std::ptr::null(),
            key_length: 0,
            value_ptr: std::ptr::null(),
            value_length: 0,
        }
    }
}

// envoy_dynamic_module_type_http_header_type
pub const REQUEST_HEADER: u32 = 0;
pub const RESPONSE_HEADER: u32 = 2;
pub const RESPONSE_TRAILER: u32 = 3;
// envoy_dynamic_module_type_log_level
pub const LOG_INFO: u32 = 2;
pub const LOG_WARN: u32 = 3;
pub const LOG_ERROR: u32 = 4;
// envoy_dynamic_module_type_attribute_id
pub const ATTRIBUTE_RESPONSE_CODE_DETAILS: u32 = 16;
pub const ATTRIBUTE_XDS_CLUSTER_NAME: u32 = 57;
/// `..._metrics_result_Success`, `..._http_callout_init_result_Success`,
/// `..._http_callout_result_Success`; every `Continue` status.
pub const SUCCESS: u32 = 0;

/// Declares the callbacks as a table of function pointers, resolved once with
/// `dlsym` when Envoy loads the module: the module has no undefined symbols, so
/// it always loads and can refuse an Envoy that lacks one with a message (Rust
/// links with immediate binding, and a missing symbol would otherwise fail
/// `dlopen` with the linker's words only).
macro_rules! callbacks {
    ($($field:ident: fn($($arg:ident: $ty:ty),* $(,)?) $(-> $ret:ty)?;)*) => {
        pub struct Callbacks {
            $(pub $field: unsafe extern "C" fn($($ty),*) $(-> $ret)?,)*
        }

        impl Callbacks {
            /// The callbacks of the running process, or the names it lacks.
            fn resolve() -> Result<Callbacks, Vec<&'static str>> {
                let mut missing = Vec::new();
                $(
                    let $field = lookup(callback_name!($field));
                    if $field.is_null() {
                        missing.push(callback_name!($field).to_str().unwrap_or("?"));
                    }
                )*
                if !missing.is_empty() {
                    return Err(missing);
                }
                // SAFETY: each address is the exported callback of this name, whose
                // signature is the one declared (checked against abi.h).
                Ok(unsafe {
                    Callbacks {
                        $($field: std::mem::transmute::<*mut c_void, unsafe extern "C" fn($($ty),*) $(-> $ret)?>($field),)*
                    }
                })
            }
        }
    };
}

macro_rules! callback_name {
    ($field:ident) => {
        match std::ffi::CStr::from_bytes_with_nul(
            concat!("envoy_dynamic_module_callback_", stringify!($field), "\0").as_bytes(),
        ) {
            Ok(name) => name,
            Err(_) => c"",
        }
    };
}

callbacks! {
    log: fn(level: u32, message: ModuleBuffer);
    http_get_headers_size: fn(filter: EnvoyPtr, header_type: u32) -> usize;
    http_get_headers: fn(filter: EnvoyPtr, header_type: u32, result: *mut HttpHeader) -> bool;
    http_set_header: fn(filter: EnvoyPtr, header_type: u32, key: ModuleBuffer, value: ModuleBuffer) -> bool;
    http_add_header: fn(filter: EnvoyPtr, header_type: u32, key: ModuleBuffer, value: ModuleBuffer) -> bool;
    http_clear_route_cache: fn(filter: EnvoyPtr);
    http_get_header: fn(
        filter: EnvoyPtr,
        header_type: u32,
        key: ModuleBuffer,
        result: *mut EnvoyBuffer,
        index: usize,
        optional_size: *mut usize,
    ) -> bool;
    http_get_cluster_name: fn(filter: EnvoyPtr, result: *mut EnvoyBuffer) -> bool;
    cluster_specifier_get_request_headers_size: fn(context: EnvoyPtr) -> usize;
    cluster_specifier_get_request_headers: fn(context: EnvoyPtr, result: *mut HttpHeader) -> bool;
    cluster_specifier_get_random_value: fn(context: EnvoyPtr) -> u64;
    cluster_specifier_set_cluster_name: fn(context: EnvoyPtr, cluster: ModuleBuffer);
    http_filter_get_attribute_string: fn(filter: EnvoyPtr, attribute_id: u32, result: *mut EnvoyBuffer) -> bool;
    http_filter_config_define_counter: fn(
        config: EnvoyPtr,
        name: ModuleBuffer,
        label_names: *const ModuleBuffer,
        label_names_length: usize,
        id: *mut usize,
    ) -> u32;
    http_filter_config_define_histogram: fn(
        config: EnvoyPtr,
        name: ModuleBuffer,
        label_names: *const ModuleBuffer,
        label_names_length: usize,
        id: *mut usize,
    ) -> u32;
    http_filter_config_define_gauge: fn(
        config: EnvoyPtr,
        name: ModuleBuffer,
        label_names: *const ModuleBuffer,
        label_names_length: usize,
        id: *mut usize,
    ) -> u32;
    http_filter_config_set_gauge: fn(
        config: EnvoyPtr,
        id: usize,
        label_values: *const ModuleBuffer,
        label_values_length: usize,
        value: u64,
    ) -> u32;
    http_filter_config_increment_counter: fn(
        config: EnvoyPtr,
        id: usize,
        label_values: *const ModuleBuffer,
        label_values_length: usize,
        value: u64,
    ) -> u32;
    http_filter_config_record_histogram_value: fn(
        config: EnvoyPtr,
        id: usize,
        label_values: *const ModuleBuffer,
        label_values_length: usize,
        value: u64,
    ) -> u32;
    http_filter_config_http_callout: fn(
        config: EnvoyPtr,
        callout_id: *mut u64,
        cluster: ModuleBuffer,
        headers: *mut HttpHeader,
        headers_size: usize,
        body: ModuleBuffer,
        timeout_milliseconds: u64,
    ) -> u32;
    http_filter_config_scheduler_new: fn(config: EnvoyPtr) -> EnvoyPtr;
    http_filter_config_scheduler_commit: fn(scheduler: EnvoyPtr, event_id: u64);
    http_filter_config_scheduler_delete: fn(scheduler: EnvoyPtr);
}

extern "C" {
    fn dlsym(handle: *mut c_void, symbol: *const c_char) -> *mut c_void;
}

/// The address of `name` in the process (glibc's `RTLD_DEFAULT` is null).
fn lookup(name: &std::ffi::CStr) -> *mut c_void {
    // SAFETY: dlsym with RTLD_DEFAULT and a NUL-terminated name only looks up.
    unsafe { dlsym(std::ptr::null_mut(), name.as_ptr()) }
}

static RESOLVED: std::sync::OnceLock<Result<Callbacks, Vec<&'static str>>> =
    std::sync::OnceLock::new();

/// Resolves the callbacks (once); the names the process lacks, if any.
pub fn resolve() -> Result<&'static Callbacks, &'static [&'static str]> {
    match RESOLVED.get_or_init(Callbacks::resolve) {
        Ok(callbacks) => Ok(callbacks),
        Err(missing) => Err(missing),
    }
}

/// The callbacks, once `resolve` found them all (it runs when Envoy loads the
/// module, before any other hook).
pub fn callbacks() -> Option<&'static Callbacks> {
    RESOLVED.get().and_then(|r| r.as_ref().ok())
}

/// Logs through Envoy (the module's lines carry Envoy's `dynamic_modules` logger).
pub fn log(level: u32, message: &str) {
    if let Some(callbacks) = callbacks() {
        // SAFETY: the buffer outlives the call.
        unsafe { (callbacks.log)(level, ModuleBuffer::of(message.as_bytes())) }
    }
}
