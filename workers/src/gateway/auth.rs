//! Optional bearer-token auth, verified by the `jsonwebtoken` crate: HS256 with a shared key, RS256 and
//! ES256 with public keys (a PEM key or a JWKS document), each from an environment variable the
//! configuration names (the operator fills them from Secrets).
//!
//! - The header's `alg` must be one the configured keys are for, so `none`, HS-with-a-public-key and other
//!   substitutions are refused by the library. A JWKS key with a `kid` is only tried for tokens naming it.
//! - `exp` is required unless the configuration relaxes it; `exp` and `nbf` are checked when present
//!   (30 s leeway); `aud` and `iss` are checked when configured.
//! - A `symbols` claim (`["BTC", "ETH"]`, or `["*"]` for all) limits what the client may stream, as
//!   Mercure's topic selectors do: asking for a symbol outside it is a 403.
//!
//! Keys and tokens are never logged: [`Auth`]'s `Debug` prints the algorithms only, and [`AuthError`]
//! names what was wrong, never the token.

use std::fmt;

use cryptoviz_crds::config::GatewayConfig;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, JwkSet};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;

/// Clock skew tolerated on `exp` and `nbf`, in seconds.
const LEEWAY_S: u64 = 30;

/// One verification key.
struct Key {
    alg: Algorithm,
    kid: Option<String>,
    key: DecodingKey,
}

/// The verification keys and the checks every token passes.
pub struct Auth {
    keys: Vec<Key>,
    /// Checks shared by every algorithm (`algorithms` is set per key).
    validation: Validation,
}

impl fmt::Debug for Auth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let algs: Vec<_> = self.keys.iter().map(|k| k.alg).collect();
        write!(f, "Auth {{ algorithms: {algs:?}, keys: <redacted> }}")
    }
}

/// What a valid token grants.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Grant {
    /// Upper-case symbols the client may stream; `None` means all.
    pub symbols: Option<Vec<String>>,
    /// The token's `exp` (seconds since the epoch): the stream is closed then.
    pub expires_at: Option<i64>,
}

/// Why a token was refused. The message is what the client is told.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AuthError {
    /// No bearer token in the request.
    #[error("missing bearer token")]
    Missing,
    /// Not a JWT, or its header or claims do not parse.
    #[error("malformed token")]
    Malformed,
    /// The header's `alg` is not one the gateway has a key for.
    #[error("algorithm not accepted")]
    Algorithm,
    /// No configured key verifies the signature.
    #[error("bad signature")]
    BadSignature,
    /// `exp` is past or `nbf` is in the future.
    #[error("token expired or not yet valid")]
    Expired,
    /// A claim the gateway requires is absent (`exp`, or `aud`/`iss` when configured).
    #[error("token lacks the {0} claim")]
    MissingClaim(String),
    /// `aud` does not name the configured audience.
    #[error("wrong audience")]
    Audience,
    /// `iss` is not the configured issuer.
    #[error("wrong issuer")]
    Issuer,
}

impl From<jsonwebtoken::errors::Error> for AuthError {
    fn from(e: jsonwebtoken::errors::Error) -> Self {
        use jsonwebtoken::errors::ErrorKind as K;
        match e.kind() {
            K::InvalidSignature => AuthError::BadSignature,
            K::ExpiredSignature | K::ImmatureSignature => AuthError::Expired,
            K::MissingRequiredClaim(c) => AuthError::MissingClaim(c.clone()),
            K::InvalidAudience => AuthError::Audience,
            K::InvalidIssuer => AuthError::Issuer,
            K::InvalidAlgorithm | K::MissingAlgorithm | K::InvalidAlgorithmName | K::UnsupportedAlgorithm => {
                AuthError::Algorithm
            }
            _ => AuthError::Malformed,
        }
    }
}

/// The claims the gateway reads (the library checks `exp`, `nbf`, `aud`, `iss` itself).
#[derive(Deserialize)]
struct Claims {
    exp: Option<i64>,
    symbols: Option<Vec<String>>,
}

/// Verification keys parsed from a public-key document: a JWKS (`{"keys": [...]}`) or one PEM public key
/// (RSA for RS256, P-256 EC for ES256).
fn public_keys(doc: &str) -> anyhow::Result<Vec<Key>> {
    let doc = doc.trim();
    if doc.starts_with('{') {
        let set: JwkSet = serde_json::from_str(doc).map_err(|e| anyhow::anyhow!("not a JWKS document: {e}"))?;
        let mut keys = Vec::new();
        for (i, jwk) in set.keys.iter().enumerate() {
            let alg = match (&jwk.common.key_algorithm, &jwk.algorithm) {
                (Some(a), _) => {
                    a.to_string().parse().map_err(|_| anyhow::anyhow!("JWKS key {i}: alg {a} is not accepted"))?
                }
                (None, AlgorithmParameters::RSA(_)) => Algorithm::RS256,
                (None, AlgorithmParameters::EllipticCurve(p)) if p.curve == EllipticCurve::P256 => Algorithm::ES256,
                (None, _) => anyhow::bail!("JWKS key {i}: only RSA and P-256 EC keys are accepted"),
            };
            if !matches!(alg, Algorithm::RS256 | Algorithm::ES256) {
                anyhow::bail!("JWKS key {i}: alg {alg:?} is not accepted (RS256 or ES256)");
            }
            let key = DecodingKey::from_jwk(jwk).map_err(|e| anyhow::anyhow!("JWKS key {i}: {e}"))?;
            keys.push(Key { alg, kid: jwk.common.key_id.clone(), key });
        }
        anyhow::ensure!(!keys.is_empty(), "the JWKS document has no keys");
        return Ok(keys);
    }
    if let Ok(key) = DecodingKey::from_rsa_pem(doc.as_bytes()) {
        return Ok(vec![Key { alg: Algorithm::RS256, kid: None, key }]);
    }
    match DecodingKey::from_ec_pem(doc.as_bytes()) {
        Ok(key) => Ok(vec![Key { alg: Algorithm::ES256, kid: None, key }]),
        Err(_) => anyhow::bail!("neither a JWKS document nor an RSA or P-256 EC public key in PEM"),
    }
}

fn read_env(var: &str) -> anyhow::Result<String> {
    match std::env::var(var) {
        Ok(k) if !k.is_empty() => Ok(k),
        _ => anyhow::bail!("gateway auth is configured but the key variable {var} is unset or empty"),
    }
}

impl Auth {
    /// Auth from the gateway configuration and the environment variables it names; `None` when no key is
    /// configured. A configured but missing, empty or unparsable key is an error: the gateway must never
    /// silently start open.
    pub fn from_config(cfg: &GatewayConfig) -> anyhow::Result<Option<Self>> {
        let mut keys = Vec::new();
        if let Some(var) = &cfg.jwt_key_env {
            keys.push(Key {
                alg: Algorithm::HS256,
                kid: None,
                key: DecodingKey::from_secret(read_env(var)?.as_bytes())?,
            });
        }
        if let Some(var) = &cfg.jwt_public_keys_env {
            keys.extend(public_keys(&read_env(var)?).map_err(|e| anyhow::anyhow!("{var}: {e}"))?);
        }
        if keys.is_empty() {
            return Ok(None);
        }
        Ok(Some(Auth::new(keys, cfg.jwt_require_exp, cfg.jwt_audience.as_deref(), cfg.jwt_issuer.as_deref())))
    }

    fn new(keys: Vec<Key>, require_exp: bool, audience: Option<&str>, issuer: Option<&str>) -> Self {
        let mut v = Validation::new(Algorithm::HS256);
        v.leeway = LEEWAY_S;
        v.validate_nbf = true;
        let mut required = Vec::new();
        if require_exp {
            required.push("exp");
        }
        v.validate_aud = audience.is_some();
        if let Some(a) = audience {
            v.set_audience(&[a]);
            required.push("aud");
        }
        if let Some(i) = issuer {
            v.set_issuer(&[i]);
            required.push("iss");
        }
        v.set_required_spec_claims(&required);
        Auth { keys, validation: v }
    }

    /// Verify a compact JWT: the first configured key of the token's algorithm (and `kid`, when both name
    /// one) that verifies it decides.
    pub fn verify(&self, token: &str) -> Result<Grant, AuthError> {
        let header = jsonwebtoken::decode_header(token).map_err(|_| AuthError::Malformed)?;
        let mut last = AuthError::Algorithm;
        for k in self.keys.iter().filter(|k| k.alg == header.alg) {
            if let (Some(want), Some(have)) = (&header.kid, &k.kid)
                && want != have
            {
                continue;
            }
            let mut v = self.validation.clone();
            v.algorithms = vec![k.alg];
            match jsonwebtoken::decode::<Claims>(token, &k.key, &v) {
                Ok(data) => return Ok(grant(data.claims)),
                Err(e) => last = e.into(),
            }
        }
        Err(last)
    }
}

/// The request's path and query for a log line, with any `access_token` value replaced by `REDACTED`.
pub fn loggable(uri: &axum::http::Uri) -> String {
    let Some(q) = uri.query() else { return uri.path().to_owned() };
    let pairs = form_urlencoded::parse(q.as_bytes())
        .map(|(k, v)| if k == "access_token" { (k, "REDACTED".into()) } else { (k, v) });
    format!("{}?{}", uri.path(), form_urlencoded::Serializer::new(String::new()).extend_pairs(pairs).finish())
}

fn grant(c: Claims) -> Grant {
    let symbols = c.symbols.filter(|s| !s.iter().any(|s| s == "*"));
    Grant { symbols: symbols.map(|s| s.into_iter().map(|s| s.to_uppercase()).collect()), expires_at: c.exp }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hs(key: &str, require_exp: bool, aud: Option<&str>) -> Auth {
        let key = Key { alg: Algorithm::HS256, kid: None, key: DecodingKey::from_secret(key.as_bytes()).unwrap() };
        Auth::new(vec![key], require_exp, aud, None)
    }

    fn sign(key: &str, alg: Algorithm, claims: serde_json::Value) -> String {
        let k = jsonwebtoken::EncodingKey::from_secret(key.as_bytes()).unwrap();
        jsonwebtoken::encode(&jsonwebtoken::Header::new(alg), &claims, &k).unwrap()
    }

    fn in_an_hour() -> i64 {
        chrono::Utc::now().timestamp() + 3600
    }

    #[test]
    fn a_good_token_grants_its_symbols_and_expiry() {
        let exp = in_an_hour();
        let t = sign("k", Algorithm::HS256, serde_json::json!({"symbols": ["btc"], "exp": exp}));
        assert_eq!(
            hs("k", true, None).verify(&t),
            Ok(Grant { symbols: Some(vec!["BTC".into()]), expires_at: Some(exp) })
        );
        let all = sign("k", Algorithm::HS256, serde_json::json!({"symbols": ["*"], "exp": exp}));
        assert_eq!(hs("k", true, None).verify(&all).unwrap().symbols, None);
    }

    #[test]
    fn refusals_name_what_was_wrong() {
        let a = hs("k", true, Some("cryptoviz"));
        let exp = in_an_hour();
        let cases = [
            (
                sign("other", Algorithm::HS256, serde_json::json!({"exp": exp, "aud": "cryptoviz"})),
                AuthError::BadSignature,
            ),
            (sign("k", Algorithm::HS256, serde_json::json!({"exp": exp, "aud": "else"})), AuthError::Audience),
            (sign("k", Algorithm::HS256, serde_json::json!({"exp": 1000, "aud": "cryptoviz"})), AuthError::Expired),
            (
                sign("k", Algorithm::HS256, serde_json::json!({"aud": "cryptoviz"})),
                AuthError::MissingClaim("exp".into()),
            ),
            (sign("k", Algorithm::HS512, serde_json::json!({"exp": exp, "aud": "cryptoviz"})), AuthError::Algorithm),
            ("a.b".into(), AuthError::Malformed),
        ];
        for (token, want) in cases {
            assert_eq!(a.verify(&token), Err(want));
        }
        assert!(format!("{a:?}").contains("redacted"));
    }

    #[test]
    fn exp_can_be_relaxed_but_is_still_checked_when_present() {
        let a = hs("k", false, None);
        assert!(a.verify(&sign("k", Algorithm::HS256, serde_json::json!({"sub": "x"}))).is_ok());
        assert_eq!(a.verify(&sign("k", Algorithm::HS256, serde_json::json!({"exp": 1000}))), Err(AuthError::Expired));
    }

    #[test]
    fn pem_public_keys_pick_their_algorithm() {
        let rsa = public_keys(include_str!("../../../tests/fixtures/jwt/rsa.pub.pem")).unwrap();
        let ec = public_keys(include_str!("../../../tests/fixtures/jwt/ec.pub.pem")).unwrap();
        assert_eq!((rsa[0].alg, ec[0].alg), (Algorithm::RS256, Algorithm::ES256));
    }

    #[test]
    fn query_tokens_are_redacted_for_logs() {
        let uri: axum::http::Uri = "/stream?symbols=BTC&access_token=eyJ.secret.sig".parse().unwrap();
        assert_eq!(loggable(&uri), "/stream?symbols=BTC&access_token=REDACTED");
        assert_eq!(loggable(&"/stream".parse().unwrap()), "/stream");
    }

    #[test]
    fn public_key_documents_are_checked() {
        assert!(public_keys("not a key").is_err());
        assert!(public_keys(r#"{"keys": []}"#).is_err());
        assert!(public_keys(r#"{"keys": [{"kty": "oct", "k": "AAAA"}]}"#).is_err());
    }
}
