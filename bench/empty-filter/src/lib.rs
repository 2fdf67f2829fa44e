//! The benchmark's baselines for any proxy-wasm filter, in one module:
//! - configuration `""`: an HTTP filter that does nothing (the empty filter);
//! - configuration `"floor"`: only the host calls policy-canary's job cannot avoid
//!   (read the session header, sha256 it, write the cluster and version headers,
//!   read the response headers once, and a streamed answer's trailers once);
//! - a comma list of those steps (`read`, `hash`, `write`, `response`), so that the
//!   benchmark's profile can tell what each one costs;
//! - and the host calls policy-canary makes beyond the floor, each a step of its own:
//!   `map` (the whole request map instead of one header), `bucket` (a third request
//!   header), `clock` (a clock read at the request and at the end), `strip` (remove
//!   the seven telemetry headers), `histogram` (record the latency); `calls` is the
//!   floor with all of them: every host call policy-canary makes on a plain answer.

#[cfg(target_arch = "wasm32")]
mod glue {
    use proxy_wasm::hostcalls;
    use proxy_wasm::traits::{Context, HttpContext, RootContext};
    use proxy_wasm::types::{Action, ContextType, MetricType};
    use sha2::{Digest, Sha256};

    /// Which of the floor's steps run.
    #[derive(Default, Clone, Copy)]
    struct Steps {
        read: bool,
        hash: bool,
        write: bool,
        response: bool,
        map: bool,
        bucket: bool,
        clock: bool,
        strip: bool,
        histogram: bool,
    }

    const TELEMETRY: [&str; 7] = [
        "x-agent-outcome",
        "x-agent-cost-micros",
        "x-agent-tokens",
        "x-agent-tool-calls",
        "x-agent-tool-errors",
        "x-agent-guardrail-triggers",
        "x-agent-safety-violations",
    ];

    impl Steps {
        fn parse(configuration: &[u8]) -> Option<Steps> {
            let text = std::str::from_utf8(configuration).ok()?;
            if text.trim().is_empty() {
                return None;
            }
            let mut steps = Steps::default();
            for step in text.split(',').map(str::trim) {
                match step {
                    "floor" | "calls" => {
                        let calls = step == "calls";
                        steps = Steps {
                            read: true,
                            hash: true,
                            write: true,
                            response: true,
                            map: calls,
                            bucket: calls,
                            clock: calls,
                            strip: calls,
                            histogram: calls,
                        }
                    }
                    "read" => steps.read = true,
                    "hash" => steps.hash = true,
                    "write" => steps.write = true,
                    "response" => steps.response = true,
                    "map" => steps.map = true,
                    "bucket" => steps.bucket = true,
                    "clock" => steps.clock = true,
                    "strip" => steps.strip = true,
                    "histogram" => steps.histogram = true,
                    _ => {}
                }
            }
            Some(steps)
        }
    }

    #[derive(Default)]
    struct Root {
        floor: Option<Steps>,
        histogram: Option<u32>,
    }

    struct Empty;

    struct Floor {
        steps: Steps,
        histogram: Option<u32>,
        started: Option<std::time::SystemTime>,
    }

    impl Context for Root {}
    impl RootContext for Root {
        fn on_configure(&mut self, _: usize) -> bool {
            self.floor = self
                .get_plugin_configuration()
                .and_then(|c| Steps::parse(&c));
            if self.floor.is_some_and(|s| s.histogram) {
                self.histogram =
                    hostcalls::define_metric(MetricType::Histogram, "floor.rq_latency_ms").ok();
            }
            true
        }
        fn create_http_context(&self, _: u32) -> Option<Box<dyn HttpContext>> {
            match self.floor {
                Some(steps) => Some(Box::new(Floor {
                    steps,
                    histogram: self.histogram,
                    started: None,
                })),
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
            let steps = self.steps;
            if steps.clock {
                self.started = Some(self.get_current_time());
            }
            let session = if steps.map {
                self.get_http_request_headers_bytes()
                    .into_iter()
                    .find(|(name, _)| name == "x-session-id")
                    .map(|(_, value)| value)
                    .unwrap_or_default()
            } else if steps.read {
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
            if steps.bucket {
                self.set_http_request_header("x-canary-bucket", Some(&bucket.to_string()));
            }
            Action::Continue
        }
        fn on_http_response_headers(&mut self, _: usize, _: bool) -> Action {
            if self.steps.response {
                let headers = self.get_http_response_headers_bytes();
                if self.steps.strip {
                    for name in TELEMETRY {
                        if headers.iter().any(|(n, _)| n == name) {
                            self.set_http_response_header(name, None);
                        }
                    }
                }
            }
            Action::Continue
        }
        fn on_http_response_trailers(&mut self, _: usize) -> Action {
            if self.steps.response {
                let _ = self.get_http_response_trailers_bytes();
            }
            Action::Continue
        }
        fn on_log(&mut self) {
            let millis = match self.started {
                Some(started) => self
                    .get_current_time()
                    .duration_since(started)
                    .map_or(0, |d| d.as_millis() as u64),
                None => 0,
            };
            if let Some(id) = self.histogram {
                let _ = hostcalls::record_metric(id, millis);
            }
        }
    }

    proxy_wasm::main! {{
        proxy_wasm::set_root_context(|_| Box::<Root>::default());
    }}
}
