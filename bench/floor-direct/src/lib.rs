//! The benchmark's floor built the way policy-canary is: the same host calls as
//! `empty-filter`'s floor (read the session header, sha256 it, write the cluster
//! and version headers, read the response headers once, and a streamed answer's
//! trailers once), but from a module that exports only the callbacks it uses, so
//! Envoy never enters the VM for a body chunk. It keeps no state, so it exports no
//! `proxy_on_done` or `proxy_on_delete`; it does export `proxy_on_log` (empty), as
//! the job must see every stream's end. Side by side with the SDK-built floor it
//! shows what the exports alone save.

#[cfg(target_arch = "wasm32")]
mod glue {
    use sha2::{Digest, Sha256};
    use std::ptr::null_mut;

    #[link(wasm_import_module = "env")]
    extern "C" {
        fn proxy_get_header_map_value(
            map_type: u32,
            key_data: *const u8,
            key_size: usize,
            return_data: *mut *mut u8,
            return_size: *mut usize,
        ) -> u32;
        fn proxy_get_header_map_pairs(
            map_type: u32,
            return_data: *mut *mut u8,
            return_size: *mut usize,
        ) -> u32;
        fn proxy_replace_header_map_value(
            map_type: u32,
            key_data: *const u8,
            key_size: usize,
            value_data: *const u8,
            value_size: usize,
        ) -> u32;
    }

    const REQUEST_HEADERS: u32 = 0;
    const RESPONSE_HEADERS: u32 = 2;
    const RESPONSE_TRAILERS: u32 = 3;

    /// Bytes the host returned (allocated by `proxy_on_memory_allocate`), owned.
    fn owned(data: *mut u8, size: usize) -> Vec<u8> {
        if data.is_null() {
            return Vec::new();
        }
        // SAFETY: the host allocated exactly `size` bytes through
        // `proxy_on_memory_allocate` (a boxed slice of that length).
        unsafe { Vec::from_raw_parts(data, size, size) }
    }

    fn header(name: &str) -> Vec<u8> {
        let (mut data, mut size) = (null_mut(), 0);
        // SAFETY: a live &str and valid out-pointers.
        unsafe {
            proxy_get_header_map_value(
                REQUEST_HEADERS,
                name.as_ptr(),
                name.len(),
                &mut data,
                &mut size,
            )
        };
        owned(data, size)
    }

    fn map(map_type: u32) -> Vec<u8> {
        let (mut data, mut size) = (null_mut(), 0);
        // SAFETY: valid out-pointers.
        unsafe { proxy_get_header_map_pairs(map_type, &mut data, &mut size) };
        owned(data, size)
    }

    fn set(name: &str, value: &str) {
        // SAFETY: live &strs.
        unsafe {
            proxy_replace_header_map_value(
                REQUEST_HEADERS,
                name.as_ptr(),
                name.len(),
                value.as_ptr(),
                value.len(),
            )
        };
    }

    #[no_mangle]
    pub extern "C" fn proxy_abi_version_0_2_1() {}

    extern "C" {
        fn __wasm_call_ctors();
    }

    #[no_mangle]
    pub extern "C" fn _initialize() {
        // SAFETY: the linker's constructor list, run once first.
        unsafe { __wasm_call_ctors() };
    }

    #[no_mangle]
    pub extern "C" fn proxy_on_memory_allocate(size: usize) -> *mut u8 {
        Box::into_raw(vec![0u8; size].into_boxed_slice()).cast::<u8>()
    }

    #[no_mangle]
    pub extern "C" fn proxy_on_vm_start(_: u32, _: usize) -> bool {
        true
    }

    #[no_mangle]
    pub extern "C" fn proxy_on_configure(_: u32, _: usize) -> bool {
        true
    }

    #[no_mangle]
    pub extern "C" fn proxy_on_context_create(_: u32, _: u32) {}

    #[no_mangle]
    pub extern "C" fn proxy_on_request_headers(_: u32, _: usize, _: bool) -> u32 {
        let session = header("x-session-id");
        let mut hash = Sha256::new();
        hash.update(b"salt\0");
        hash.update(&session);
        let bucket = u16::from_be_bytes([hash.finalize()[0], 0]) % 10_000;
        let (cluster, version) = if bucket < 1_000 {
            ("agent_canary", "v2")
        } else {
            ("agent_stable", "v1")
        };
        set("x-policy-cluster", cluster);
        set("x-agent-policy", version);
        0
    }

    #[no_mangle]
    pub extern "C" fn proxy_on_response_headers(_: u32, _: usize, _: bool) -> u32 {
        drop(map(RESPONSE_HEADERS));
        0
    }

    #[no_mangle]
    pub extern "C" fn proxy_on_response_trailers(_: u32, _: usize) -> u32 {
        drop(map(RESPONSE_TRAILERS));
        0
    }

    #[no_mangle]
    pub extern "C" fn proxy_on_log(_: u32) {}
}
