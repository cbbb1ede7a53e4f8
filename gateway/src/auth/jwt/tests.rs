//! The validator against the attack corpus (research 5), with inline key sets: no network.
//! Fetching and caching are tested over real sockets in `gateway/tests/jwt_validation.rs`.

use std::time::{Duration, Instant};

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine as _;
use hmac::{Hmac, Mac};
use ring::rand::SystemRandom;
use ring::signature::{self as sig, EcdsaKeyPair, Ed25519KeyPair, KeyPair, RsaKeyPair};
use serde_json::{json, Value};
use sha2::Sha256;

use super::*;

pub enum Signer {
    Rsa(RsaKeyPair),
    Ec(EcdsaKeyPair),
    Ed(Ed25519KeyPair),
}

impl Signer {
    pub fn rsa() -> Signer {
        let der = include_bytes!("../../../tests/data/jwt/rsa2048.pk8.der");
        Signer::Rsa(RsaKeyPair::from_pkcs8(der).expect("an RSA key"))
    }

    pub fn ec() -> Signer {
        let rng = SystemRandom::new();
        let alg = &sig::ECDSA_P256_SHA256_FIXED_SIGNING;
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(alg, &rng).expect("generated");
        Signer::Ec(EcdsaKeyPair::from_pkcs8(alg, pkcs8.as_ref(), &rng).expect("an EC key"))
    }

    pub fn ed() -> Signer {
        let pkcs8 = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new()).expect("generated");
        Signer::Ed(Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).expect("an Ed25519 key"))
    }

    pub fn jwk(&self, kid: &str) -> Value {
        let b64 = |bytes: &[u8]| URL_SAFE_NO_PAD.encode(bytes);
        match self {
            Signer::Rsa(key) => {
                let public = sig::RsaPublicKeyComponents::<Vec<u8>>::from(key.public());
                json!({"kty": "RSA", "kid": kid, "use": "sig", "n": b64(&public.n), "e": b64(&public.e)})
            }
            Signer::Ec(key) => {
                let point = key.public_key().as_ref();
                json!({"kty": "EC", "crv": "P-256", "kid": kid, "x": b64(&point[1..33]), "y": b64(&point[33..])})
            }
            Signer::Ed(key) => {
                json!({"kty": "OKP", "crv": "Ed25519", "kid": kid, "x": b64(key.public_key().as_ref())})
            }
        }
    }

    pub fn sign(&self, alg: &str, input: &[u8]) -> Vec<u8> {
        let rng = SystemRandom::new();
        match self {
            Signer::Rsa(key) => {
                let padding: &'static dyn sig::RsaEncoding = match alg {
                    "PS256" => &sig::RSA_PSS_SHA256,
                    "RS384" => &sig::RSA_PKCS1_SHA384,
                    _ => &sig::RSA_PKCS1_SHA256,
                };
                let mut out = vec![0; key.public().modulus_len()];
                key.sign(padding, &rng, input, &mut out).expect("signed");
                out
            }
            Signer::Ec(key) => key.sign(&rng, input).expect("signed").as_ref().to_vec(),
            Signer::Ed(key) => key.sign(input).as_ref().to_vec(),
        }
    }
}

fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

/// A token with `header` and `claims`, signed by `signer` under `alg`.
pub fn jwt(header: &Value, claims: &Value, signer: &Signer, alg: &str) -> String {
    let input = format!(
        "{}.{}",
        b64(header.to_string().as_bytes()),
        b64(claims.to_string().as_bytes())
    );
    let signature = signer.sign(alg, input.as_bytes());
    format!("{input}.{}", b64(&signature))
}

/// A token with the default claims, signed with `alg` under `kid`.
fn signed(alg: &str, kid: &str, signer: &Signer) -> String {
    jwt(&json!({"alg": alg, "kid": kid}), &claims(), signer, alg)
}

fn now() -> u64 {
    unix_now()
}

fn claims() -> Value {
    json!({"sub": "user-1", "exp": now() + 600, "iat": now(), "aud": "api", "iss": "https://issuer.example"})
}

fn rule(id: &str, keys: Vec<Value>, roles: &[&str]) -> JwtRule {
    let settings = JwksSettings {
        id: id.into(),
        jwks_url: String::new(),
        provider_name: "test".into(),
        jwt_audience: None,
        role_names: roles.iter().map(|r| r.to_string()).collect(),
        jwt_issuer: None,
        algorithms: vec![],
        jwks: Some(json!({ "keys": keys })),
    };
    JwtRule::from_settings(&settings, false).expect("a rule")
}

struct Fixture {
    rsa: Signer,
    ec: Signer,
    ed: Signer,
    rules: Vec<JwtRule>,
    metrics: Metrics,
    validator: JwtValidator,
}

fn fixture() -> Fixture {
    let (rsa, ec, ed) = (Signer::rsa(), Signer::ec(), Signer::ed());
    let mut main = rule(
        "main",
        vec![rsa.jwk("rsa"), ec.jwk("ec"), ed.jwk("ed")],
        &["authenticated", "anonymous"],
    );
    main.audience = Some("api".into());
    main.issuer = Some("https://issuer.example".into());
    let metrics = Metrics::new();
    let validator = JwtValidator::new(JwtConfig::default(), &metrics);
    Fixture {
        rsa,
        ec,
        ed,
        rules: vec![main],
        metrics,
        validator,
    }
}

fn endpoint() -> EndpointId {
    EndpointId::parse("ep-test-123").expect("an endpoint id")
}

impl Fixture {
    async fn check(&self, role: &str, token: &str) -> Result<VerifiedJwt, JwtError> {
        self.validator
            .validate(&endpoint(), &self.rules, role, token)
            .await
    }

    /// The outcome label of validating `token` as `authenticated`.
    async fn outcome(&self, token: &str) -> &'static str {
        match self.check("authenticated", token).await {
            Ok(_) => "ok",
            Err(e) => {
                assert_eq!(e.to_string(), "authentication failed: invalid JWT");
                e.outcome().label()
            }
        }
    }
}

use crate::obs::labels::Label as _;

#[tokio::test]
async fn each_algorithm_verifies_and_the_claims_come_back_as_signed() {
    let f = fixture();
    for (signer, kid, alg) in [
        (&f.rsa, "rsa", "RS256"),
        (&f.ec, "ec", "ES256"),
        (&f.ed, "ed", "EdDSA"),
    ] {
        let claims = claims();
        let token = jwt(
            &json!({"alg": alg, "kid": kid, "typ": "JWT"}),
            &claims,
            signer,
            alg,
        );
        let verified = f.check("authenticated", &token).await.expect(alg);
        assert_eq!(Value::Object(verified.claims), claims);
        assert_eq!(verified.exp, claims["exp"].as_u64().expect("exp"));
        assert_eq!(verified.rule_id, "main");
    }
    assert_eq!(f.metrics.jwt_validations.get(JwtOutcome::Ok), 3);
}

#[tokio::test]
async fn other_algorithms_only_when_the_rule_allows_them() {
    let mut f = fixture();
    let ps = signed("PS256", "rsa", &f.rsa);
    let rs384 = signed("RS384", "rsa", &f.rsa);
    assert_eq!(f.outcome(&ps).await, "bad_algorithm");
    f.rules[0].algorithms = vec![Algorithm::PS256, Algorithm::RS384];
    assert_eq!(f.outcome(&ps).await, "ok");
    assert_eq!(f.outcome(&rs384).await, "ok");
    // EdDSA is not allowed by this rule any more.
    let ed = signed("EdDSA", "ed", &f.ed);
    assert_eq!(f.outcome(&ed).await, "bad_algorithm");
}

#[tokio::test]
async fn alg_none_and_algorithm_confusion_are_refused() {
    let f = fixture();
    let payload = b64(claims().to_string().as_bytes());
    for none in ["none", "None", "NONE", "nOnE"] {
        let header = b64(json!({"alg": none, "kid": "rsa"}).to_string().as_bytes());
        assert_eq!(
            f.outcome(&format!("{header}.{payload}.")).await,
            "malformed"
        );
        assert_eq!(
            f.outcome(&format!("{header}.{payload}.c2ln")).await,
            "bad_algorithm"
        );
    }
    // HS256 with the RSA public key as the secret (raw DER, and n).
    let Signer::Rsa(rsa) = &f.rsa else {
        unreachable!()
    };
    let n = sig::RsaPublicKeyComponents::<Vec<u8>>::from(rsa.public()).n;
    for secret in [rsa.public_key().as_ref().to_vec(), n] {
        let header = b64(json!({"alg": "HS256", "kid": "rsa"}).to_string().as_bytes());
        let input = format!("{header}.{payload}");
        let mut mac = Hmac::<Sha256>::new_from_slice(&secret).expect("any length");
        mac.update(input.as_bytes());
        let token = format!("{input}.{}", b64(&mac.finalize().into_bytes()));
        assert_eq!(f.outcome(&token).await, "bad_algorithm");
    }
    // A kid of another key type than the alg's.
    let es_on_rsa = signed("ES256", "rsa", &f.ec);
    let rs_on_ec = signed("RS256", "ec", &f.rsa);
    let ed_on_ec = signed("EdDSA", "ec", &f.ed);
    for token in [es_on_rsa, rs_on_ec, ed_on_ec] {
        assert_eq!(f.outcome(&token).await, "bad_algorithm");
    }
    assert_eq!(f.metrics.jwt_validations.get(JwtOutcome::BadAlgorithm), 9);
    assert_eq!(f.metrics.jwt_validations.get(JwtOutcome::Malformed), 4);
}

#[tokio::test]
async fn a_key_pinned_to_an_alg_verifies_only_that_alg() {
    let mut f = fixture();
    let mut pinned = f.rsa.jwk("pinned");
    pinned["alg"] = json!("RS256");
    f.rules = vec![rule("pinned", vec![pinned], &["authenticated"])];
    f.rules[0].algorithms = vec![Algorithm::RS256, Algorithm::PS256];
    let rs = signed("RS256", "pinned", &f.rsa);
    let ps = signed("PS256", "pinned", &f.rsa);
    assert_eq!(f.outcome(&rs).await, "ok");
    assert_eq!(f.outcome(&ps).await, "bad_algorithm");
}

#[tokio::test]
async fn kid_cases() {
    let f = fixture();
    let header = |kid: Value| json!({"alg": "ES256", "kid": kid});
    let sign = |header: Value| jwt(&header, &claims(), &f.ec, "ES256");
    assert_eq!(f.outcome(&sign(header(json!("nope")))).await, "unknown_key");
    assert_eq!(
        f.outcome(&sign(header(json!("../../dev/null")))).await,
        "unknown_key"
    );
    assert_eq!(
        f.outcome(&sign(header(json!("' OR 1=1 --")))).await,
        "unknown_key"
    );
    assert_eq!(f.outcome(&sign(header(json!(7)))).await, "malformed");
    assert_eq!(f.outcome(&sign(header(json!(null)))).await, "malformed");
    assert_eq!(f.outcome(&sign(header(json!(["ec"])))).await, "malformed");
    assert_eq!(
        f.outcome(&sign(header(json!("k".repeat(10 * 1024))))).await,
        "malformed"
    );
    assert_eq!(f.outcome(&sign(json!({"alg": "ES256"}))).await, "malformed");
}

#[tokio::test]
async fn embedded_keys_and_key_urls_are_ignored() {
    let f = fixture();
    let attacker = Signer::ec();
    // The attacker's own key, embedded, under the victim's kid and under its own.
    for kid in ["ec", "attacker"] {
        let header = json!({"alg": "ES256", "kid": kid, "jwk": attacker.jwk(kid),
                            "jku": "https://evil.example/jwks", "x5u": "https://evil.example/cert"});
        let expected = if kid == "ec" {
            "bad_signature"
        } else {
            "unknown_key"
        };
        assert_eq!(
            f.outcome(&jwt(&header, &claims(), &attacker, "ES256"))
                .await,
            expected
        );
    }
}

#[tokio::test]
async fn header_parameters_that_change_the_meaning_are_refused() {
    let f = fixture();
    for extra in [
        json!({"crit": ["exp"]}),
        json!({"crit": ["b64"], "b64": false}),
        json!({"b64": true}),
        json!({"enc": "A128GCM"}),
        json!({"zip": "DEF"}),
        json!({"cty": "JWT"}),
    ] {
        let mut header = json!({"alg": "ES256", "kid": "ec"});
        for (k, v) in extra.as_object().expect("an object") {
            header[k] = v.clone();
        }
        assert_eq!(
            f.outcome(&jwt(&header, &claims(), &f.ec, "ES256")).await,
            "malformed",
            "{header}"
        );
    }
}

#[tokio::test]
async fn claims_cases() {
    let f = fixture();
    let with = |changes: Value| {
        let mut claims = claims();
        for (k, v) in changes.as_object().expect("an object") {
            if v.is_null() {
                claims.as_object_mut().expect("an object").remove(k);
            } else {
                claims[k] = v.clone();
            }
        }
        jwt(
            &json!({"alg": "ES256", "kid": "ec"}),
            &claims,
            &f.ec,
            "ES256",
        )
    };
    let t = now();
    let cases = [
        (json!({"exp": t - 3600}), "expired"),
        (json!({"exp": t - 10}), "ok"),
        (json!({"nbf": t + 3600}), "not_yet_valid"),
        (json!({"iat": t + 3600}), "not_yet_valid"),
        (json!({"exp": (t + 600).to_string()}), "bad_claims"),
        (json!({"exp": t as f64 + 600.5}), "bad_claims"),
        (json!({"exp": null}), "bad_claims"),
        (json!({"nbf": t.to_string()}), "bad_claims"),
        (json!({"aud": "other"}), "wrong_audience"),
        (json!({"aud": ["other", "api"]}), "ok"),
        (json!({"aud": []}), "wrong_audience"),
        (json!({"aud": null}), "wrong_audience"),
        (json!({"iss": "https://evil.example"}), "wrong_issuer"),
        (json!({"iss": null}), "wrong_issuer"),
        (json!({"sub": ""}), "bad_claims"),
        (json!({"sub": "a\u{0}b"}), "bad_claims"),
        (json!({"role": "postgres"}), "ok"),
    ];
    for (changes, expected) in cases {
        assert_eq!(
            f.outcome(&with(changes.clone())).await,
            expected,
            "{changes}"
        );
    }
    assert_eq!(f.metrics.jwt_validations.get(JwtOutcome::Expired), 1);
    assert_eq!(f.metrics.jwt_validations.get(JwtOutcome::WrongAudience), 3);
}

#[tokio::test]
async fn the_role_must_be_one_of_the_rules() {
    let f = fixture();
    let token = signed("ES256", "ec", &f.ec);
    assert!(f.check("anonymous", &token).await.is_ok());
    for role in ["postgres", "Authenticated", "authenticated ", ""] {
        let refused = f.check(role, &token).await.expect_err(role);
        assert_eq!(refused, JwtError::RoleNotAllowed);
    }
    assert_eq!(f.metrics.jwt_validations.get(JwtOutcome::RoleNotAllowed), 4);
}

#[tokio::test]
async fn a_huge_token_is_refused_before_decoding() {
    let f = fixture();
    let huge = format!(
        "{}.{}.{}",
        "e".repeat(1 << 19),
        "e".repeat(1 << 19),
        "e".repeat(100)
    );
    let started = Instant::now();
    assert_eq!(
        f.check("authenticated", &huge).await,
        Err(JwtError::Malformed("too large"))
    );
    assert!(started.elapsed() < Duration::from_millis(20));
}

#[tokio::test]
async fn encodings_other_than_strict_base64url_are_refused() {
    let f = fixture();
    let token = signed("ES256", "ec", &f.ec);
    assert_eq!(f.outcome(&token).await, "ok");
    let (input, signature) = token.rsplit_once('.').expect("three segments");
    let raw = URL_SAFE_NO_PAD.decode(signature).expect("base64url");
    let padded = format!("{input}.{signature}=");
    let standard = format!("{input}.{}", STANDARD.encode(&raw));
    let header_padded = format!(
        "{}=={}",
        &token[..token.find('.').expect("a dot")],
        &token[token.find('.').expect("a dot")..]
    );
    for bad in [
        padded,
        standard,
        header_padded,
        format!(" {token}"),
        format!("{token}\n"),
    ] {
        assert_eq!(f.outcome(&bad).await, "malformed", "{bad}");
    }
    // Duplicate header keys, with a valid signature over them.
    let header = r#"{"alg":"ES256","alg":"none","kid":"ec"}"#;
    let input = format!(
        "{}.{}",
        b64(header.as_bytes()),
        b64(claims().to_string().as_bytes())
    );
    let dup = format!("{input}.{}", b64(&f.ec.sign("ES256", input.as_bytes())));
    assert_eq!(f.outcome(&dup).await, "malformed");
}

#[tokio::test]
async fn ecdsa_signatures_are_raw_r_and_s() {
    let f = fixture();
    let token = signed("ES256", "ec", &f.ec);
    let (input, signature) = token.rsplit_once('.').expect("three segments");
    let raw = URL_SAFE_NO_PAD.decode(signature).expect("base64url");
    let (r, s) = raw.split_at(32);
    // DER: SEQUENCE { INTEGER r, INTEGER s } (with sign bytes when needed).
    let int = |v: &[u8]| {
        let mut out = vec![2];
        let pad = v[0] >= 0x80;
        out.push((v.len() + usize::from(pad)) as u8);
        if pad {
            out.push(0);
        }
        out.extend_from_slice(v);
        out
    };
    let mut der = int(r);
    der.extend(int(s));
    der.splice(0..0, [0x30, der.len() as u8]);
    let mut longer = raw.clone();
    longer.push(0);
    for bad in [der, vec![0; 64], raw[..63].to_vec(), longer] {
        assert_eq!(
            f.outcome(&format!("{input}.{}", b64(&bad))).await,
            "bad_signature"
        );
    }
    // An RSA signature one byte short of the modulus.
    let token = signed("RS256", "rsa", &f.rsa);
    let (input, signature) = token.rsplit_once('.').expect("three segments");
    let raw = URL_SAFE_NO_PAD.decode(signature).expect("base64url");
    assert_eq!(
        f.outcome(&format!("{input}.{}", b64(&raw[1..]))).await,
        "bad_signature"
    );
}

#[tokio::test]
async fn duplicate_kids_are_ambiguous_never_tried_in_turn() {
    let mut f = fixture();
    let other = Signer::ec();
    let token = signed("ES256", "dup", &f.ec);
    // Within one set.
    f.rules = vec![rule(
        "one",
        vec![f.ec.jwk("dup"), other.jwk("dup")],
        &["authenticated"],
    )];
    assert_eq!(f.outcome(&token).await, "ambiguous_key");
    // Across two rules of the role.
    f.rules = vec![
        rule("a", vec![f.ec.jwk("dup")], &["authenticated"]),
        rule("b", vec![other.jwk("dup")], &["authenticated"]),
    ];
    assert_eq!(f.outcome(&token).await, "ambiguous_key");
    // A rule of another role does not count.
    f.rules[1].role_names = vec!["anonymous".into()];
    assert_eq!(f.outcome(&token).await, "ok");
    // Same kid, another key type: only the one that suits the alg is a candidate.
    f.rules = vec![rule(
        "mixed",
        vec![f.rsa.jwk("dup"), f.ec.jwk("dup")],
        &["authenticated"],
    )];
    assert_eq!(f.outcome(&token).await, "ok");
}

#[test]
fn rules_from_settings() {
    let settings = |url: &str| JwksSettings {
        id: "r".into(),
        jwks_url: url.into(),
        provider_name: "p".into(),
        jwt_audience: None,
        role_names: vec!["authenticated".into()],
        jwt_issuer: Some("https://issuer.example".into()),
        algorithms: vec![],
        jwks: None,
    };
    let check =
        |url: &str, loopback: bool| JwtRule::from_settings(&settings(url), loopback).map(|_| ());
    assert!(check("https://idp.example/.well-known/jwks.json", false).is_ok());
    assert!(check("https://idp.example/jwks?tenant=1", false).is_ok());
    for (url, loopback) in [
        ("http://idp.example/jwks", false),
        ("http://idp.example/jwks", true),
        ("http://127.0.0.1:1/jwks", false),
        ("http://10.0.0.1/jwks", true),
        ("ftp://idp.example/jwks", false),
        ("file:///etc/passwd", true),
        ("https://user:pw@idp.example/jwks", false),
        ("https://user@idp.example/jwks", false),
        ("https://idp.example/jwks#frag", false),
        ("not a url", false),
    ] {
        assert!(check(url, loopback).is_err(), "{url} {loopback}");
    }
    for url in [
        "http://127.0.0.1:1/jwks",
        "http://[::1]:1/jwks",
        "http://localhost:1/jwks",
        "http://127.8.9.10/jwks",
    ] {
        assert!(check(url, true).is_ok(), "{url}");
    }
    let rule =
        JwtRule::from_settings(&settings("https://idp.example/jwks"), false).expect("a rule");
    assert_eq!(
        rule.algorithms,
        [Algorithm::RS256, Algorithm::ES256, Algorithm::EdDSA]
    );
    assert_eq!(rule.issuer.as_deref(), Some("https://issuer.example"));
    let mut bad = settings("https://idp.example/jwks");
    bad.algorithms = vec!["HS256".into()];
    assert!(
        matches!(JwtRule::from_settings(&bad, false), Err(RuleError::Algorithm(a)) if a == "HS256")
    );
    bad.algorithms = vec![];
    bad.jwks = Some(json!({"keys": []}));
    assert!(matches!(
        JwtRule::from_settings(&bad, false),
        Err(RuleError::Source)
    ));
    bad.jwks_url = String::new();
    assert!(matches!(
        JwtRule::from_settings(&bad, false),
        Err(RuleError::NoUsableKey)
    ));
    // An RSA key below 2048 bits is not usable.
    let weak: Value =
        serde_json::from_str(include_str!("../../../tests/data/jwt/rsa1024.jwk.json"))
            .expect("JSON");
    bad.jwks = Some(json!({"keys": [weak]}));
    assert!(matches!(
        JwtRule::from_settings(&bad, false),
        Err(RuleError::NoUsableKey)
    ));
}

#[tokio::test]
async fn a_signature_verified_once_is_remembered_for_that_key_only() {
    let f = fixture();
    let header = json!({"alg": "EdDSA", "kid": "ed"});
    let token = jwt(&header, &claims(), &f.ed, "EdDSA");
    assert_eq!(f.outcome(&token).await, "ok");
    assert_eq!(f.validator.signatures.entry_count(), 0, "counted lazily");
    f.validator.signatures.run_pending_tasks();
    assert_eq!(f.validator.signatures.entry_count(), 1);
    // Again: the same answer, from the remembered signature.
    assert_eq!(f.outcome(&token).await, "ok");
    f.validator.signatures.run_pending_tasks();
    assert_eq!(f.validator.signatures.entry_count(), 1);
    // The same signed input with another signature is checked, and refused.
    let (input, _) = token.rsplit_once('.').expect("three parts");
    let forged = format!("{input}.{}", b64(&[7u8; 64]));
    assert_eq!(f.outcome(&forged).await, "bad_signature");
    // The same kid with another key (a rotation): the remembered signature does not apply.
    let other = Signer::ed();
    let rotated = vec![rule("main", vec![other.jwk("ed")], &["authenticated"])];
    let refused = f
        .validator
        .validate(&endpoint(), &rotated, "authenticated", &token)
        .await;
    assert!(
        matches!(refused, Err(JwtError::BadSignature)),
        "{refused:?}"
    );
    // Claims are checked every time: an expired token is refused however it was signed.
    let expired = jwt(
        &header,
        &json!({"sub": "u", "exp": now() - 3600}),
        &f.ed,
        "EdDSA",
    );
    assert_eq!(f.outcome(&expired).await, "expired");
}
