//! Optional bearer-token auth: HS256 JWTs signed with the key in the environment variable the
//! configuration names. A `symbols` claim restricts which symbols the client may stream.
//!
//! Only HS256 is accepted (the header's `alg` is checked, so `none` or an asymmetric algorithm can never be
//! substituted); `exp` and `nbf` are honoured when present. The key is never logged: [`Auth`]'s `Debug`
//! prints a placeholder.

use std::fmt;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{KeyInit, Mac};
use serde::Deserialize;

type HmacSha256 = hmac::Hmac<sha2_gateway::Sha256>;

/// Clock skew tolerated on `exp` and `nbf`, in seconds.
const LEEWAY_S: i64 = 30;

/// The HS256 verification key.
pub struct Auth {
    key: Vec<u8>,
}

impl fmt::Debug for Auth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Auth { key: <redacted> }")
    }
}

/// What a valid token grants.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Grant {
    /// Upper-case symbols the client may stream; `None` means all.
    pub symbols: Option<Vec<String>>,
}

/// Why a token was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AuthError {
    /// No bearer token in the request.
    #[error("missing bearer token")]
    Missing,
    /// Not a well-formed HS256 JWT.
    #[error("malformed token: {0}")]
    Malformed(&'static str),
    /// The signature does not match the key.
    #[error("bad signature")]
    BadSignature,
    /// `exp` is past or `nbf` is in the future.
    #[error("token expired or not yet valid")]
    Expired,
}

#[derive(Deserialize)]
struct Header {
    alg: String,
}

#[derive(Deserialize)]
struct Claims {
    exp: Option<i64>,
    nbf: Option<i64>,
    symbols: Option<Vec<String>>,
}

impl Auth {
    /// Auth from the configured environment variable; `None` when auth is off. A configured but missing or
    /// empty variable is an error: the gateway must never silently start open.
    pub fn from_env(var: Option<&str>) -> anyhow::Result<Option<Self>> {
        let Some(var) = var else { return Ok(None) };
        match std::env::var(var) {
            Ok(k) if !k.is_empty() => Ok(Some(Auth { key: k.into_bytes() })),
            _ => anyhow::bail!("gateway auth is configured but the key variable {var} is unset or empty"),
        }
    }

    /// Auth with a given key.
    pub fn new(key: impl Into<Vec<u8>>) -> Self {
        Auth { key: key.into() }
    }

    /// Verify a compact JWT at `now` (seconds since the epoch).
    pub fn verify(&self, token: &str, now: i64) -> Result<Grant, AuthError> {
        let mut parts = token.split('.');
        let (Some(h), Some(p), Some(s), None) = (parts.next(), parts.next(), parts.next(), parts.next()) else {
            return Err(AuthError::Malformed("not three dot-separated parts"));
        };
        let header: Header = decode_json(h)?;
        if header.alg != "HS256" {
            return Err(AuthError::Malformed("alg is not HS256"));
        }
        let sig = URL_SAFE_NO_PAD.decode(s).map_err(|_| AuthError::Malformed("signature is not base64url"))?;
        let mut mac = HmacSha256::new_from_slice(&self.key).expect("HMAC takes keys of any length");
        mac.update(&token.as_bytes()[..h.len() + 1 + p.len()]);
        // Constant-time comparison.
        mac.verify_slice(&sig).map_err(|_| AuthError::BadSignature)?;
        let claims: Claims = decode_json(p)?;
        if claims.exp.is_some_and(|exp| now > exp + LEEWAY_S) || claims.nbf.is_some_and(|nbf| now + LEEWAY_S < nbf) {
            return Err(AuthError::Expired);
        }
        Ok(Grant { symbols: claims.symbols.map(|s| s.into_iter().map(|s| s.to_uppercase()).collect()) })
    }
}

fn decode_json<T: serde::de::DeserializeOwned>(part: &str) -> Result<T, AuthError> {
    let bytes = URL_SAFE_NO_PAD.decode(part).map_err(|_| AuthError::Malformed("part is not base64url"))?;
    serde_json::from_slice(&bytes).map_err(|_| AuthError::Malformed("part is not the expected JSON"))
}

#[cfg(test)]
mod tests {
    use super::*;

    // The HS256 example token from RFC 7519's reference site (jwt.io), key "your-256-bit-secret".
    const EXAMPLE: &str = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.\
        eyJzdWIiOiIxMjM0NTY3ODkwIiwibmFtZSI6IkpvaG4gRG9lIiwiaWF0IjoxNTE2MjM5MDIyfQ.\
        SflKxwRJSMeKKF2QT4fwpMeJf36POk6yJV_adQssw5c";

    fn sign(key: &[u8], header: &str, claims: &str) -> String {
        let msg = format!("{}.{}", URL_SAFE_NO_PAD.encode(header), URL_SAFE_NO_PAD.encode(claims));
        let mut mac = HmacSha256::new_from_slice(key).unwrap();
        mac.update(msg.as_bytes());
        format!("{msg}.{}", URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes()))
    }

    #[test]
    fn accepts_a_known_good_token_and_rejects_a_wrong_key() {
        assert_eq!(Auth::new("your-256-bit-secret").verify(EXAMPLE, 0), Ok(Grant { symbols: None }));
        assert_eq!(Auth::new("other").verify(EXAMPLE, 0), Err(AuthError::BadSignature));
    }

    #[test]
    fn symbols_claim_restricts_and_times_are_checked() {
        let a = Auth::new("k");
        let t = sign(b"k", r#"{"alg":"HS256"}"#, r#"{"symbols":["btc"],"exp":1000}"#);
        assert_eq!(a.verify(&t, 900).unwrap().symbols, Some(vec!["BTC".to_string()]));
        assert_eq!(a.verify(&t, 2000), Err(AuthError::Expired));
        let nbf = sign(b"k", r#"{"alg":"HS256"}"#, r#"{"nbf":5000}"#);
        assert_eq!(a.verify(&nbf, 1000), Err(AuthError::Expired));
    }

    #[test]
    fn other_algorithms_and_garbage_are_refused() {
        let a = Auth::new("k");
        let none = format!("{}.{}.", URL_SAFE_NO_PAD.encode(r#"{"alg":"none"}"#), URL_SAFE_NO_PAD.encode("{}"));
        assert!(matches!(a.verify(&none, 0), Err(AuthError::Malformed(_))));
        let hs512 = sign(b"k", r#"{"alg":"HS512"}"#, "{}");
        assert!(matches!(a.verify(&hs512, 0), Err(AuthError::Malformed(_))));
        assert!(matches!(a.verify("a.b", 0), Err(AuthError::Malformed(_))));
        assert!(format!("{a:?}").contains("redacted"));
    }
}
