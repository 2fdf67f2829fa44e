//! One HTTP stream: route the request (cohort, header edits), read the agent's
//! telemetry from the response headers or trailers, count it all at the end.

use super::host::{Host, MapKind};
use super::worker::Worker;
use crate::cohort::Cohort;
use crate::config::ServedBy;
use crate::route::RouteTable;
use crate::routing::{route_request, Decision, HeaderEdit};
use crate::stats::StreamRecord;
use crate::wire::HeaderMap;
use std::rc::Rc;

/// One request header edit; a failure is logged (once per kind).
fn edit_request(worker: &Worker, host: &impl Host, edit: HeaderEdit<'_>) {
    let result = match edit {
        HeaderEdit::Remove(name) => host.remove_map_value(MapKind::RequestHeaders, name),
        HeaderEdit::Add(name, value) => {
            host.add_map_value(MapKind::RequestHeaders, name, value.as_bytes())
        }
    };
    if result.is_err() {
        worker.host_error(host, "edit request headers");
    }
}

pub struct Stream {
    /// `None` for a root that is not a configured filter: the stream passes through.
    worker: Option<Rc<Worker>>,
    /// The table this request was routed by, kept for its end even if the table changes.
    table: Option<Rc<RouteTable>>,
    decision: Option<Decision>,
    record: StreamRecord,
    /// When the request's headers arrived (host clock, ns; 0: unknown).
    started_ns: u64,
}

impl Stream {
    pub fn new(worker: Option<Rc<Worker>>) -> Stream {
        Stream {
            table: worker.as_ref().map(|w| w.current_table()),
            worker,
            decision: None,
            record: StreamRecord::default(),
            started_ns: 0,
        }
    }

    pub fn on_request_headers(&mut self, host: &impl Host) {
        let (Some(worker), Some(table)) = (&self.worker, &self.table) else {
            return;
        };
        self.started_ns = host.now_ns();
        let headers = host.map(MapKind::RequestHeaders).unwrap_or_else(|_| {
            worker.host_error(host, "read request headers");
            HeaderMap::default()
        });
        let decision = route_request(
            &worker.config,
            table,
            &headers,
            || worker.random(),
            |edit| edit_request(worker, host, edit),
        );
        self.decided(decision);
    }

    /// The request as the host's router routed it before the filter ran (the
    /// native module's cluster specifier, deciding by `table`): makes the header
    /// edits it left (`edits`, then the version header) and keeps its decision.
    pub fn on_routed_request<'a>(
        &mut self,
        host: &impl Host,
        table: Rc<RouteTable>,
        decision: Decision,
        edits: impl IntoIterator<Item = HeaderEdit<'a>>,
    ) {
        let Some(worker) = &self.worker else {
            return;
        };
        self.started_ns = host.now_ns();
        for edit in edits {
            edit_request(worker, host, edit);
        }
        let version = &table.backend(decision.cohort).version;
        edit_request(
            worker,
            host,
            HeaderEdit::Add(&worker.config.version_header, version),
        );
        self.table = Some(table);
        self.decided(decision);
    }

    fn decided(&mut self, decision: Decision) {
        self.record.traffic = decision.traffic;
        self.record.sessionless = decision.sessionless;
        self.decision = Some(decision);
    }

    pub fn on_response_headers(&mut self, host: &impl Host) {
        let Some(worker) = self.worker.clone() else {
            return;
        };
        let headers = host.map(MapKind::ResponseHeaders).unwrap_or_default();
        self.record.status = headers
            .get(":status")
            .and_then(|value| std::str::from_utf8(value).ok()?.parse().ok());
        self.read_telemetry(&worker, host, MapKind::ResponseHeaders, headers);
    }

    pub fn on_response_trailers(&mut self, host: &impl Host) {
        let Some(worker) = self.worker.clone() else {
            return;
        };
        let trailers = host.map(MapKind::ResponseTrailers).unwrap_or_default();
        self.read_telemetry(&worker, host, MapKind::ResponseTrailers, trailers);
    }

    /// Reads telemetry from a response header or trailer map and strips it if configured.
    fn read_telemetry(
        &mut self,
        worker: &Worker,
        host: &impl Host,
        map: MapKind,
        headers: HeaderMap<'_>,
    ) {
        let telemetry = &worker.config.telemetry;
        let metrics = self.table.as_deref().map_or(&[][..], |t| &t.metrics[..]);
        let found = self
            .record
            .report
            .read(&telemetry.headers, metrics, &headers);
        if !telemetry.strip {
            return;
        }
        if found.custom {
            // Every header with the custom metrics' prefix, listed or not: the
            // agent's report is not the client's (rare; names are copied).
            let prefix = telemetry.headers.metric_prefix.as_bytes();
            let names: Vec<String> = headers
                .iter()
                .filter(|(name, _)| name.starts_with(prefix))
                .map(|(name, _)| String::from_utf8_lossy(name).into_owned())
                .collect();
            for name in names {
                if host.remove_map_value(map, &name).is_err() {
                    worker.host_error(host, "strip telemetry");
                }
            }
        }
        // One removal per telemetry header present: measured cheaper than replacing
        // the whole map once (`BENCH_ONLY=plain make bench`: 102 vs 106.5 µs/rq
        // median with seven telemetry headers, Envoy 1.40), and it touches only
        // those headers.
        for name in found.names(&telemetry.headers) {
            if host.remove_map_value(map, name).is_err() {
                worker.host_error(host, "strip telemetry");
            }
        }
    }

    /// The stream has ended: count it for the version that served it.
    pub fn on_log(&mut self, host: &impl Host) {
        let (Some(worker), Some(table), Some(decision)) =
            (&self.worker, &self.table, self.decision)
        else {
            return;
        };
        let cluster = match worker.config.served_by {
            ServedBy::Cluster => host.property(&["xds", "cluster_name"]).ok().flatten(),
            ServedBy::Decision => None,
        };
        let cohort: Cohort = table.served_cohort(decision.cohort, cluster.as_deref());
        let version = &table.backend(cohort).version;
        if self.record.status.is_some_and(|s| s >= 500) {
            // Envoy's own 5xx for an upstream that reset before answering.
            let details = host.property(&["response", "code_details"]).ok().flatten();
            self.record.upstream_reset = details.is_some_and(|d| d.starts_with(b"upstream_reset"));
        }
        let mut tally = worker.tally();
        tally
            .counts
            .counters_mut(version, self.record.traffic)
            .record(&self.record);
        // From the request's headers to the stream's end, by two clock reads: no
        // property path for Envoy to look up and serialise.
        let now = host.now_ns();
        let millis = (self.started_ns > 0 && now >= self.started_ns)
            .then(|| (now - self.started_ns) / 1_000_000);
        if let Some(replicate) = decision.replicate {
            tally
                .replicates
                .counts_mut(version, replicate)
                .record(&self.record, millis);
        }
        tally.custom.record(
            version,
            self.record.traffic,
            decision.replicate,
            &table.metrics,
            &self.record.report.custom,
        );
        if let Some(millis) = millis {
            let id =
                tally
                    .metrics
                    .latency(host, &worker.config.target, version, self.record.traffic);
            if let Some(id) = id {
                if host.record_metric(id, millis).is_err() {
                    worker.host_error(host, "record latency");
                }
            }
        }
    }
}
