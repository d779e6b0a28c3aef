//! claimgate: an identity-enforcing reverse proxy for ML data access.
//!
//! Every request walks one pipeline (see [`pipeline`]):
//!
//! ```text
//! listener ─▶ route ─▶ authenticate ─▶ classify ─▶ authorize ─▶ sign ─▶ forward ─▶ audit + metrics
//! ```
//!
//! | stage        | module                 | output                         |
//! |--------------|------------------------|--------------------------------|
//! | listener     | [`server`]             | connections, TLS, admin port   |
//! | route        | [`upstream::routes`]   | the [`upstream::Route`]        |
//! | authenticate | [`identity`]           | [`model::Identity`]            |
//! | classify     | [`classify`]           | [`model::Operation`]           |
//! | authorize    | [`policy`]             | [`policy::Permit`] or a denial |
//! | sign         | [`upstream::sign`]     | an upstream request            |
//! | forward      | [`upstream::forward`]  | the streamed response          |
//! |  (integrity) | [`digest`]             | bodies held to their digests   |
//! |  (forms)     | [`body::form_file`]          | form uploads' files, measured  |
//! | audit        | [`audit`], [`metrics`] | one record + counters          |
//!
//! Refusals from any stage become a [`rejection::Rejection`], rendered the way the caller's
//! client expects (S3 XML or JSON problem).

pub mod audit;
pub mod body;
pub mod classify;
pub mod clock;
pub mod config;
#[cfg(feature = "dev")]
pub mod dev;
pub mod diag;
pub mod digest;
pub mod identity;
pub mod metrics;
pub mod model;
pub mod net;
pub mod pipeline;
pub mod policy;
pub mod rejection;
pub mod secret;
pub mod server;
pub mod sigv4;
pub mod upstream;
mod xml_text;
