//! Who is calling: the SPIFFE identity in the client certificate that mutual TLS verified.

use tonic::Request;

/// The caller's identity as text (`spiffe://td/role/name`), or `unknown` when the certificate
/// carries none (per-role authorization is enforced in a later change).
pub fn caller<T>(req: &Request<T>) -> String {
    req.peer_certs()
        .and_then(|certs| certs.first().cloned())
        .and_then(|c| cd_common::certs::identity_from_der(c.as_ref()).ok())
        .map_or_else(|| "unknown".to_string(), |id| id.to_string())
}
