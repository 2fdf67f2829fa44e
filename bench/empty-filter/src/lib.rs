//! The benchmark's baselines for any proxy-wasm filter, in one module:
//! - configuration `""`: an HTTP filter that does nothing (the empty filter);
//! - configuration `"floor"`: only the host calls policy-canary's job cannot avoid
//!   (read the session header, sha256 it, write the cluster and version headers,
//!   read the response headers once, and a streamed answer's trailers once);
//! - a comma list of those steps (`read`, `hash`, `write`, `response`), so that the
//!   benchmark's profile can tell what each one costs.

#[cfg(target_arch = "wasm32")]
mod glue {
    use proxy_wasm::traits::{Context, HttpContext, RootContext};
    use proxy_wasm::types::{Action, ContextType};
    use sha2::{Digest, Sha256};

    /// Which of the floor's steps run.
    #[derive(Default, Clone, Copy)]
    struct Steps {
        read: bool,
        hash: bool,
        write: bool,
        response: bool,
    }

    impl Steps {
        fn parse(configuration: &[u8]) -> Option<Steps> {
            let text = std::str::from_utf8(configuration).ok()?;
            if text.trim().is_empty() {
                return None;
            }
            let mut steps = Steps::default();
            for step in text.split(',').map(str::trim) {
                match step {
                    "floor" => {
                        steps = Steps {
                            read: true,
                            hash: true,
                            write: true,
                            response: true,
                        }
                    }
                    "read" => steps.read = true,
                    "hash" => steps.hash = true,
                    "write" => steps.write = true,
                    "response" => steps.response = true,
                    _ => {}
                }
            }
            Some(steps)
        }
    }

    #[derive(Default)]
    struct Root {
        floor: Option<Steps>,
    }

    struct Empty;

    struct Floor(Steps);

    impl Context for Root {}
    impl RootContext for Root {
        fn on_configure(&mut self, _: usize) -> bool {
            self.floor = self
                .get_plugin_configuration()
                .and_then(|c| Steps::parse(&c));
            true
        }
        fn create_http_context(&self, _: u32) -> Option<Box<dyn HttpContext>> {
            match self.floor {
                Some(steps) => Some(Box::new(Floor(steps))),
                None => Some(Box::new(Empty)),
            }
        }
        fn get_type(&self) -> Option<ContextType> {
            Some(ContextType::HttpContext)
        }
    }
    impl Context for Empty {}
    impl HttpContext for Empty {}

    impl Context for Floor {}
    impl HttpContext for Floor {
        fn on_http_request_headers(&mut self, _: usize, _: bool) -> Action {
            let steps = self.0;
            let session = if steps.read {
                self.get_http_request_header_bytes("x-session-id")
                    .unwrap_or_default()
            } else {
                b"bench-session-42".to_vec()
            };
            let bucket = if steps.hash {
                let mut hash = Sha256::new();
                hash.update(b"salt\0");
                hash.update(&session);
                u16::from_be_bytes([hash.finalize()[0], 0]) % 10_000
            } else {
                session.len() as u16
            };
            let (cluster, version) = if bucket < 1_000 {
                ("agent_canary", "v2")
            } else {
                ("agent_stable", "v1")
            };
            if steps.write {
                self.set_http_request_header("x-policy-cluster", Some(cluster));
                self.set_http_request_header("x-agent-policy", Some(version));
            }
            Action::Continue
        }
        fn on_http_response_headers(&mut self, _: usize, _: bool) -> Action {
            if self.0.response {
                let _ = self.get_http_response_headers_bytes();
            }
            Action::Continue
        }
        fn on_http_response_trailers(&mut self, _: usize) -> Action {
            if self.0.response {
                let _ = self.get_http_response_trailers_bytes();
            }
            Action::Continue
        }
    }

    proxy_wasm::main! {{
        proxy_wasm::set_root_context(|_| Box::<Root>::default());
    }}
}
