//! JWT auth against the real gateway binary: HS256, RS256 and ES256 tokens (signed here, with the test-only
//! keys in `tests/fixtures/jwt/`), the refusals, the stream closed at `exp`, and no token in the log.

use std::time::{Duration, Instant};

use jsonwebtoken::jwk::{Jwk, JwkSet};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};

use crate::harness::{Client, Gateway, Opts, Topic, jwt, trade};

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/jwt");
const HS_KEY: &str = "hs256-test-key-0123456789";
const AUDIENCE: &str = "cryptoviz-test";

fn pem(name: &str) -> Vec<u8> {
    std::fs::read(format!("{FIXTURES}/{name}")).unwrap()
}

fn private_key(alg: Algorithm, name: &str) -> EncodingKey {
    match alg {
        Algorithm::RS256 => EncodingKey::from_rsa_pem(&pem(name)).unwrap(),
        _ => EncodingKey::from_ec_pem(&pem(name)).unwrap(),
    }
}

/// A token signed with the private key in `name`, naming `kid`.
fn signed(alg: Algorithm, name: &str, kid: &str, claims: &Value) -> String {
    let header = Header { kid: Some(kid.into()), ..Header::new(alg) };
    jsonwebtoken::encode(&header, claims, &private_key(alg, name)).unwrap()
}

/// The JWKS the gateway is given: the RSA key as `rsa-1`, the EC key as `ec-1` (public parts only).
fn jwks() -> String {
    let key = |alg, name: &str, kid: &str| {
        let mut k = Jwk::from_encoding_key(&private_key(alg, name), alg).unwrap();
        k.common.key_id = Some(kid.into());
        k
    };
    let set = JwkSet {
        keys: vec![key(Algorithm::RS256, "rsa.key.pem", "rsa-1"), key(Algorithm::ES256, "ec.key.pem", "ec-1")],
    };
    let doc = serde_json::to_string(&set).unwrap();
    assert!(!doc.contains("\"d\""), "the JWKS holds public keys only");
    doc
}

fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

async fn status(gw: &Gateway, path: &str, token: &str) -> u16 {
    Client::connect(&gw.addr, path, &[("Authorization", &format!("Bearer {token}"))]).await.status
}

/// HS256, RS256 and ES256 are accepted; a wrong key, a wrong `aud`, an expired token, one without `exp`
/// and a symbol outside the token's claim are refused; the gateway's log holds none of the tokens.
#[tokio::test]
async fn hs256_rs256_es256_accepted_and_bad_tokens_refused_without_logging_them() {
    let topic = Topic::create(1).await;
    let opts = Opts {
        jwt_key: Some(HS_KEY.into()),
        jwt_public_keys: Some(jwks()),
        jwt_audience: Some(AUDIENCE.into()),
        ..Opts::default()
    };
    let gw = Gateway::start(&topic, opts).await;
    let good = json!({"aud": AUDIENCE, "exp": now() + 3600, "symbols": ["BTC"]});
    let hs = jwt(HS_KEY, &good);
    let rs = signed(Algorithm::RS256, "rsa.key.pem", "rsa-1", &good);
    let es = signed(Algorithm::ES256, "ec.key.pem", "ec-1", &good);

    let mut used = vec![hs.clone(), rs.clone(), es.clone()];
    for token in [&hs, &rs, &es] {
        let mut c =
            Client::connect(&gw.addr, "/stream?symbols=BTC", &[("Authorization", &format!("Bearer {token}"))]).await;
        assert_eq!(c.status, 200);
        assert_eq!(c.next().await.data["data"]["symbols"], json!(["BTC"]));
    }
    // EventSource's way: the token in the query string.
    let mut q = Client::connect(&gw.addr, &format!("/stream?access_token={es}"), &[]).await;
    assert_eq!(q.status, 200);
    assert_eq!(q.next().await.kind(), "welcome");

    let refused = [
        ("wrong key", signed(Algorithm::ES256, "other-ec.key.pem", "ec-1", &good)),
        ("wrong HS256 key", jwt("not-the-key", &good)),
        ("wrong aud", signed(Algorithm::RS256, "rsa.key.pem", "rsa-1", &json!({"aud": "other", "exp": now() + 3600}))),
        ("expired", jwt(HS_KEY, &json!({"aud": AUDIENCE, "exp": now() - 3600}))),
        ("no exp", signed(Algorithm::ES256, "ec.key.pem", "ec-1", &json!({"aud": AUDIENCE}))),
        ("no aud", jwt(HS_KEY, &json!({"exp": now() + 3600}))),
    ];
    for (why, token) in &refused {
        assert_eq!(status(&gw, "/stream", token).await, 401, "{why}");
        used.push(token.clone());
    }
    // The same refusal with the token in the query string: logged at debug with the token redacted.
    let (_, expired) = &refused[3];
    assert_eq!(
        Client::connect(&gw.addr, &format!("/stream?symbols=BTC&access_token={expired}"), &[]).await.status,
        401
    );
    for token in [&hs, &rs, &es] {
        assert_eq!(status(&gw, "/stream?symbols=BTC,ETH", token).await, 403, "a symbol outside the claim");
    }
    assert_eq!(
        gw.metric("cryptoviz_gateway_rejected_total", &[("reason", "unauthorized")]).await,
        refused.len() as f64 + 1.0
    );

    let log = gw.log();
    assert!(
        log.iter().any(|l| l.contains("refused a token") && l.contains("access_token=REDACTED")),
        "the refusal is logged, redacted: {log:#?}"
    );
    for token in &used {
        // The signature alone is as secret as the whole token.
        let sig = token.rsplit('.').next().unwrap();
        assert!(!log.iter().any(|l| l.contains(sig)), "a token in the gateway's log");
    }
}

/// A stream whose token expires ends with an `expired` event at `exp` (within a heartbeat interval), and
/// the connection is closed.
#[tokio::test]
async fn a_stream_is_closed_with_a_final_event_when_its_token_expires() {
    let topic = Topic::create(1).await;
    let gw = Gateway::start(&topic, Opts { jwt_key: Some(HS_KEY.into()), ..Opts::default() }).await;
    let exp = now() + 3;
    let token = jwt(HS_KEY, &json!({"exp": exp}));
    let mut c = Client::connect(&gw.addr, "/stream", &[("Authorization", &format!("Bearer {token}"))]).await;
    assert_eq!(c.status, 200);
    assert_eq!(c.next().await.kind(), "welcome");
    topic.send(0, "BTC", &trade("BTC", 1)).await;
    assert_eq!(c.next().await.kind(), "trade", "the stream is live before exp");
    let start = Instant::now();
    let rest = c.until_end().await;
    let ended = now();
    let last = rest.last().expect("a final event");
    assert_eq!(last.kind(), "expired", "{rest:?}");
    assert!(ended >= exp, "closed at {ended}, before exp {exp}");
    // One heartbeat interval (1 s) after exp, plus a second for the clock's resolution.
    assert!(ended <= exp + 2, "closed at {ended}, exp {exp}");
    assert!(start.elapsed() < Duration::from_secs(6));
}
