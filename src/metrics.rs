//! Prometheus metrics, served in text format on the admin listener.

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, Opts, Registry, TextEncoder,
};

/// Every metric claimgate exports. Label values are bounded sets (route names from config,
/// IAM action names, fixed reasons) so that no caller can grow the series count.
pub struct Metrics {
    registry: Registry,
    requests: IntCounterVec,
    duration: HistogramVec,
    auth_failures: IntCounterVec,
    jwks_fetches: IntCounterVec,
    token_cache_hits: IntCounter,
    token_cache_misses: IntCounter,
    upstream_errors: IntCounterVec,
    shadow: IntCounterVec,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

fn counter(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let c = IntCounterVec::new(Opts::new(name, help), labels).expect("static metric definition");
    registry
        .register(Box::new(c.clone()))
        .expect("metric registered once");
    c
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
        let duration = HistogramVec::new(
            HistogramOpts::new(
                "claimgate_request_duration_seconds",
                "Time from request head to response head, by route.",
            )
            .buckets(vec![
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
            ]),
            &["route"],
        )
        .expect("static metric definition");
        registry
            .register(Box::new(duration.clone()))
            .expect("metric registered once");
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
        let cache = counter(
            &registry,
            "claimgate_token_cache_total",
            "Verified-token cache lookups by result.",
            &["result"],
        );
        let upstream_errors = counter(
            &registry,
            "claimgate_upstream_errors_total",
            "Upstream failures by route and kind (connect, timeout, other).",
            &["route", "kind"],
        );
        let shadow = counter(
            &registry,
            "claimgate_shadow_decisions_total",
            "Decisions of shadow-mode roles, computed but not enforced.",
            &["route", "outcome"],
        );
        Metrics {
            token_cache_hits: cache.with_label_values(&["hit"]),
            token_cache_misses: cache.with_label_values(&["miss"]),
            registry,
            requests,
            duration,
            auth_failures,
            jwks_fetches,
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
        self.duration.with_label_values(&[route]).observe(seconds);
    }

    /// Counts an authentication failure.
    pub fn auth_failure(&self, reason: &str) {
        self.auth_failures.with_label_values(&[reason]).inc();
    }

    /// Counts a JWKS fetch attempt.
    pub fn jwks_fetch(&self, issuer: &str, result: &str) {
        self.jwks_fetches.with_label_values(&[issuer, result]).inc();
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

    /// The text exposition of every metric.
    pub fn render(&self) -> String {
        let mut out = Vec::new();
        // Encoding into a Vec cannot fail for well-formed metrics.
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        String::from_utf8(out).unwrap_or_default()
    }
}
