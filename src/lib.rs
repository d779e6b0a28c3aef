//! claimgate: an identity-enforcing reverse proxy for ML data access.
//!
//! Every request walks one pipeline (see [`pipeline`]):
//!
//! ```text
//! listener ─▶ route ─▶ authenticate ─▶ classify ─▶ authorize ─▶ sign ─▶ forward ─▶ audit + metrics
//! ```
//!
//! | stage        | module                    | output                                      |
//! |--------------|---------------------------|---------------------------------------------|
//! | listener     | [`server`]                | connections, TLS, admin port                |
//! | route        | [`upstream::Router`]      | the [`upstream::Route`]                     |
//! | authenticate | [`identity`]              | [`identity::Authenticated`]                 |
//! | classify     | [`classify`]              | a [`model::Operation`]                      |
//! | authorize    | [`policy`]                | a [`policy::Permit`] holding it, or a denial |
//! | sign         | [`upstream::sign`]        | an upstream request (consumes the permit)   |
//! | forward      | [`upstream::forward`]     | the streamed response                       |
//! |  (integrity) | [`digest`], [`body`]      | bodies held to their digests                |
//! | audit        | [`audit`], [`metrics`]    | one record + counters                       |
//!
//! Beneath the stages, shared by them and depending on none: [`model`] (the values passed
//! between stages), [`sigv4`] (SigV4 for verifier and signer alike), [`net`] (TLS and the
//! outbound client), [`secret`], [`clock`], [`diag`]. `tests/layering.rs` keeps it that way.
//!
//! Refusals from any stage become a [`rejection::Rejection`], rendered the way the caller's
//! client expects (S3 XML or JSON problem).

pub mod audit;
pub mod body;
pub mod classify;
pub mod clock;
pub mod config;
pub mod credential_process;
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
pub mod reload;
pub mod secret;
pub mod server;
pub mod sigv4;
pub mod traces;
pub mod upstream;
pub mod workers;
mod xml_text;
