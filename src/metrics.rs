//! Prometheus metrics, served in text format on the admin listener.

use prometheus::{
    Encoder, Gauge, GaugeVec, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec,
    Opts, Registry, TextEncoder,
};

/// Every metric claimgate exports. Label values are bounded sets (route names from config,
/// IAM action names, fixed reasons) so that no caller can grow the series count.
pub struct Metrics {
    registry: Registry,
    requests: IntCounterVec,
    duration: HistogramVec,
    auth_failures: IntCounterVec,
    jwks_fetches: IntCounterVec,
    jwks_last_success: GaugeVec,
    jwks_keys: IntGaugeVec,
    denials: IntCounterVec,
    token_cache_hits: IntCounter,
    token_cache_misses: IntCounter,
    upstream_errors: IntCounterVec,
    shadow: IntCounterVec,
    limit_refusals: IntCounterVec,
    connections_open: IntGauge,
    audit_written: IntCounter,
    audit_write_errors: IntCounter,
    audit_dropped: IntCounter,
    audit_queue: IntGauge,
    audit_up: IntGauge,
    reloads: IntCounterVec,
    generation: IntGauge,
    last_reload_ok: IntGauge,
    last_reload_success: Gauge,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

/// Registers `metric` and hands it back: every metric is registered once, at start.
fn registered<M: prometheus::core::Collector + Clone + 'static>(registry: &Registry, metric: M) -> M {
    registry
        .register(Box::new(metric.clone()))
        .expect("metric registered once");
    metric
}

fn gauge(registry: &Registry, name: &str, help: &str) -> IntGauge {
    registered(
        registry,
        IntGauge::new(name, help).expect("static metric definition"),
    )
}

fn one_counter(registry: &Registry, name: &str, help: &str) -> IntCounter {
    registered(
        registry,
        IntCounter::new(name, help).expect("static metric definition"),
    )
}

fn counter(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let c = IntCounterVec::new(Opts::new(name, help), labels).expect("static metric definition");
    registered(registry, c)
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Creates and registers every metric.
    pub fn new() -> Self {
        let registry = Registry::new();
        let requests = counter(
            &registry,
            "claimgate_requests_total",
            "Requests by route, action, decision and response status class.",
            &["route", "action", "decision", "status_class"],
        );
        let duration = registered(
            &registry,
            HistogramVec::new(
                HistogramOpts::new(
                    "claimgate_request_duration_seconds",
                    "Time from request head to the end of the response body, by route and action (a \
                     route's listings and its large uploads take different times).",
                )
                .buckets(vec![
                    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
                ]),
                &["route", "action"],
            )
            .expect("static metric definition"),
        );
        let auth_failures = counter(
            &registry,
            "claimgate_auth_failures_total",
            "Authentication failures by reason.",
            &["reason"],
        );
        let jwks_fetches = counter(
            &registry,
            "claimgate_jwks_fetches_total",
            "JWKS fetch attempts by issuer and result (ok, error, rate_limited).",
            &["issuer", "result"],
        );
        let jwks_last_success = registered(
            &registry,
            GaugeVec::new(
                Opts::new(
                    "claimgate_jwks_last_success_timestamp_seconds",
                    "When each issuer's keys were last fetched successfully (Unix time); stale keys \
                     mean new signing keys at the IdP go unseen.",
                ),
                &["issuer"],
            )
            .expect("static metric definition"),
        );
        let jwks_keys = registered(
            &registry,
            IntGaugeVec::new(
                Opts::new(
                    "claimgate_jwks_keys",
                    "Signing keys held for each issuer, from its last successful fetch.",
                ),
                &["issuer"],
            )
            .expect("static metric definition"),
        );
        let denials = counter(
            &registry,
            "claimgate_denials_total",
            "Denied requests by route, the first role the decision counted (none: the caller \
             held no role there) and reason (policy, or the refusal's reason).",
            &["route", "role", "reason"],
        );
        let cache = counter(
            &registry,
            "claimgate_token_cache_total",
            "Verified-token cache lookups by result.",
            &["result"],
        );
        let upstream_errors = counter(
            &registry,
            "claimgate_upstream_errors_total",
            "Upstream failures by route and kind: connect, timeout, broke (cut off mid-exchange or mid-body), \
             stalled (body paused too long), answer (an answer claimgate cannot pass on), auth (the \
             upstream refused claimgate's credentials), credentials (claimgate had none for it).",
            &["route", "kind"],
        );
        let shadow = counter(
            &registry,
            "claimgate_shadow_decisions_total",
            "Decisions of shadow-mode roles, computed but not enforced.",
            &["route", "outcome"],
        );
        let limit_refusals = counter(
            &registry,
            "claimgate_limit_refusals_total",
            "Requests and connections refused by a limit (connections, request_head_timeout, \
             header_too_large, identity_concurrency, identity_rate, client_body_idle, audit_unavailable).",
            &["limit"],
        );
        let connections_open = gauge(
            &registry,
            "claimgate_connections_open",
            "Client connections open now.",
        );
        let audit_written = one_counter(
            &registry,
            "claimgate_audit_records_written_total",
            "Audit records the sink took.",
        );
        let audit_write_errors = one_counter(
            &registry,
            "claimgate_audit_write_errors_total",
            "Failed writes to the audit sink (each is retried; the records stay queued).",
        );
        let audit_dropped = one_counter(
            &registry,
            "claimgate_audit_records_dropped_total",
            "Audit records of refused requests dropped because the queue was full.",
        );
        let audit_queue = gauge(
            &registry,
            "claimgate_audit_queue_depth",
            "Audit records accepted but not yet written.",
        );
        let audit_up = gauge(
            &registry,
            "claimgate_audit_sink_up",
            "1 while the audit sink takes records, 0 from a failed write until one succeeds.",
        );
        let reloads = counter(
            &registry,
            "claimgate_reload_total",
            "Config reloads by result (success, error).",
            &["result"],
        );
        let generation = gauge(
            &registry,
            "claimgate_config_generation",
            "The config set in force: 1 at start, one more for each successful reload.",
        );
        let last_reload_ok = gauge(
            &registry,
            "claimgate_config_last_reload_successful",
            "1 when the last reload attempt succeeded (or none was made), 0 when it was refused.",
        );
        let last_reload_success = registered(
            &registry,
            Gauge::new(
                "claimgate_config_last_reload_success_timestamp_seconds",
                "When the config set in force was loaded (Unix time).",
            )
            .expect("static metric definition"),
        );
        Metrics {
            limit_refusals,
            connections_open,
            audit_written,
            audit_write_errors,
            audit_dropped,
            audit_queue,
            audit_up,
            reloads,
            generation,
            last_reload_ok,
            last_reload_success,
            token_cache_hits: cache.with_label_values(&["hit"]),
            token_cache_misses: cache.with_label_values(&["miss"]),
            registry,
            requests,
            duration,
            auth_failures,
            jwks_fetches,
            jwks_last_success,
            jwks_keys,
            denials,
            upstream_errors,
            shadow,
        }
    }

    /// Counts one finished request.
    pub fn request(&self, route: &str, action: &str, decision: &str, status: u16, seconds: f64) {
        let class = match status {
            100..=199 => "1xx",
            200..=299 => "2xx",
            300..=399 => "3xx",
            400..=499 => "4xx",
            _ => "5xx",
        };
        self.requests
            .with_label_values(&[route, action, decision, class])
            .inc();
        self.duration.with_label_values(&[route, action]).observe(seconds);
    }

    /// Counts an authentication failure.
    pub fn auth_failure(&self, reason: &str) {
        self.auth_failures.with_label_values(&[reason]).inc();
    }

    /// Counts a JWKS fetch attempt.
    pub fn jwks_fetch(&self, issuer: &str, result: &str) {
        self.jwks_fetches.with_label_values(&[issuer, result]).inc();
    }

    /// A successful JWKS fetch for `issuer` brought `n` keys.
    pub fn jwks_loaded(&self, issuer: &str, n: usize) {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64());
        self.jwks_last_success.with_label_values(&[issuer]).set(now);
        self.jwks_keys
            .with_label_values(&[issuer])
            .set(i64::try_from(n).unwrap_or(i64::MAX));
    }

    /// Counts a denied request. Roles come from the policy files and reasons from a fixed
    /// set, so neither can grow the series count; who was denied belongs in the audit log.
    pub fn denial(&self, route: &str, role: &str, reason: &str) {
        self.denials.with_label_values(&[route, role, reason]).inc();
    }

    /// Counts a verified-token cache lookup.
    pub fn token_cache(&self, hit: bool) {
        if hit {
            self.token_cache_hits.inc();
        } else {
            self.token_cache_misses.inc();
        }
    }

    /// Counts an upstream failure.
    pub fn upstream_error(&self, route: &str, kind: &str) {
        self.upstream_errors.with_label_values(&[route, kind]).inc();
    }

    /// Counts a shadow decision (`would_allow` / `would_deny`).
    pub fn shadow(&self, route: &str, outcome: &str) {
        self.shadow.with_label_values(&[route, outcome]).inc();
    }

    /// Counts a refusal by a limit.
    pub fn limit_refusal(&self, limit: &str) {
        self.limit_refusals.with_label_values(&[limit]).inc();
    }

    /// A client connection opened (`+1`) or closed (`-1`).
    pub fn connections(&self, delta: i64) {
        self.connections_open.add(delta);
    }

    /// Records accepted into the audit queue.
    pub fn audit_queued(&self, n: i64) {
        self.audit_queue.add(n);
    }

    /// Records the audit sink took.
    pub fn audit_written(&self, n: i64) {
        self.audit_written.inc_by(n.max(0) as u64);
        self.audit_queue.sub(n);
    }

    /// A failed write to the audit sink.
    pub fn audit_write_error(&self) {
        self.audit_write_errors.inc();
    }

    /// An audit record dropped for want of room.
    pub fn audit_dropped(&self) {
        self.audit_dropped.inc();
    }

    /// Whether the audit sink takes records.
    pub fn audit_sink_up(&self, up: bool) {
        self.audit_up.set(i64::from(up));
    }

    /// A config set came into force (start-up or reload) at `unix` seconds.
    pub fn config_loaded(&self, generation: u64, unix: f64, reloaded: bool) {
        self.generation.set(generation as i64);
        self.last_reload_success.set(unix);
        self.last_reload_ok.set(1);
        if reloaded {
            self.reloads.with_label_values(&["success"]).inc();
        }
    }

    /// A reload was refused; the set in force stays.
    pub fn reload_failed(&self) {
        self.last_reload_ok.set(0);
        self.reloads.with_label_values(&["error"]).inc();
    }

    /// The text exposition of every metric.
    pub fn render(&self) -> String {
        let mut out = Vec::new();
        // Encoding into a Vec cannot fail for well-formed metrics.
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        String::from_utf8(out).unwrap_or_default()
    }
}
