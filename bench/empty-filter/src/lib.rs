//! An HTTP filter that does nothing: the benchmark's floor for any proxy-wasm filter.

#[cfg(target_arch = "wasm32")]
mod glue {
    use proxy_wasm::traits::{Context, HttpContext, RootContext};
    use proxy_wasm::types::ContextType;

    struct EmptyRoot;
    struct EmptyStream;

    impl Context for EmptyRoot {}
    impl RootContext for EmptyRoot {
        fn create_http_context(&self, _: u32) -> Option<Box<dyn HttpContext>> {
            Some(Box::new(EmptyStream))
        }
        fn get_type(&self) -> Option<ContextType> {
            Some(ContextType::HttpContext)
        }
    }
    impl Context for EmptyStream {}
    impl HttpContext for EmptyStream {}

    proxy_wasm::main! {{
        proxy_wasm::set_root_context(|_| Box::new(EmptyRoot));
    }}
}
