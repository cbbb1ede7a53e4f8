//! A token's structure, header and claims, checked strictly (research 4.2): anything a
//! careful issuer never produces is refused, so no two parsers (this one, Postgres's `jsonb`,
//! the issuer's) can read one token two ways.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Number, Value};

use super::keys::{Algorithm, MAX_KID_BYTES};
use super::JwtError;

/// The latest `exp`, `nbf` or `iat` accepted: 9999-12-31T23:59:59Z.
const MAX_NUMERIC_DATE: u64 = 253_402_300_799;
/// The longest `sub` accepted.
const MAX_SUB_BYTES: usize = 512;

/// A token whose structure and header passed; its signature is not checked yet.
#[derive(Debug)]
pub struct Parsed<'a> {
    /// `header.payload`, what the signature signs.
    pub signing_input: &'a [u8],
    pub signature: Vec<u8>,
    pub alg: Algorithm,
    pub kid: String,
    pub claims: Map<String, Value>,
}

/// Splits and decodes `token` (at most `max_bytes`, checked before anything else) and checks
/// its header. The claims are parsed but not judged ([`check_claims`]).
pub fn parse(token: &str, max_bytes: usize) -> Result<Parsed<'_>, JwtError> {
    if token.len() > max_bytes {
        return Err(JwtError::Malformed("too large"));
    }
    let mut segments = token.split('.');
    let (Some(header), Some(payload), Some(signature), None) = (
        segments.next(),
        segments.next(),
        segments.next(),
        segments.next(),
    ) else {
        return Err(JwtError::Malformed("not three segments"));
    };
    if [header, payload, signature].iter().any(|s| s.is_empty()) {
        return Err(JwtError::Malformed("an empty segment"));
    }
    let header = object(&decode(header)?)?;
    let (alg, kid) = check_header(&header)?;
    let claims = object(&decode(payload)?)?;
    if has_nul(&claims) {
        return Err(JwtError::BadClaims("NUL in a claim"));
    }
    let signature = decode(signature)?;
    Ok(Parsed {
        signing_input: &token.as_bytes()[..token.len() - signature_len(token)],
        signature,
        alg,
        kid,
        claims,
    })
}

/// The length of `.signature` at the end of `token`.
fn signature_len(token: &str) -> usize {
    token.rsplit('.').next().map_or(0, |s| s.len() + 1)
}

/// A segment in strict base64url: no padding, no `+` or `/`, no whitespace, canonical
/// trailing bits.
fn decode(segment: &str) -> Result<Vec<u8>, JwtError> {
    URL_SAFE_NO_PAD
        .decode(segment)
        .map_err(|_| JwtError::Malformed("not strict base64url"))
}

/// A JSON object with no key twice at any depth (`jsonb` keeps the last of two equal keys,
/// other parsers the first).
fn object(json: &[u8]) -> Result<Map<String, Value>, JwtError> {
    match serde_json::from_slice::<Strict>(json) {
        Ok(Strict(Value::Object(map))) => Ok(map),
        Ok(_) => Err(JwtError::Malformed("not a JSON object")),
        Err(_) => Err(JwtError::Malformed("not strict JSON")),
    }
}

/// The header's `alg` and `kid`, after refusing what this gateway does not implement.
fn check_header(header: &Map<String, Value>) -> Result<(Algorithm, String), JwtError> {
    // crit: extensions we would have to understand; b64: unencoded payloads (RFC 7797);
    // enc, zip: JWE.
    for name in ["crit", "b64", "enc", "zip"] {
        if header.contains_key(name) {
            return Err(JwtError::Malformed("an unsupported header parameter"));
        }
    }
    if let Some(cty) = header.get("cty") {
        let nested = cty.as_str().is_none_or(|cty| {
            cty.eq_ignore_ascii_case("JWT") || cty.eq_ignore_ascii_case("application/jwt")
        });
        if nested {
            return Err(JwtError::Malformed("a nested JWT"));
        }
    }
    // jku, x5u, jwk and x5c are ignored: keys come only from the endpoint's rules.
    let alg = header
        .get("alg")
        .and_then(Value::as_str)
        .and_then(Algorithm::parse)
        .ok_or(JwtError::BadAlgorithm)?;
    let kid = match header.get("kid") {
        Some(Value::String(kid)) if !kid.is_empty() && kid.len() <= MAX_KID_BYTES => kid.clone(),
        _ => return Err(JwtError::Malformed("no usable kid")),
    };
    Ok((alg, kid))
}

fn has_nul(claims: &Map<String, Value>) -> bool {
    fn value(v: &Value) -> bool {
        match v {
            Value::String(s) => s.contains('\0'),
            Value::Array(items) => items.iter().any(value),
            Value::Object(map) => has_nul(map),
            _ => false,
        }
    }
    claims.iter().any(|(k, v)| k.contains('\0') || value(v))
}

/// What a rule asks of the claims.
#[derive(Clone, Copy, Debug)]
pub struct Expected<'a> {
    pub audience: Option<&'a str>,
    pub issuer: Option<&'a str>,
    /// Unix seconds.
    pub now: u64,
    pub leeway: u64,
}

/// Checks the registered claims; returns `exp`.
pub fn check_claims(claims: &Map<String, Value>, expected: Expected<'_>) -> Result<u64, JwtError> {
    let Expected { now, leeway, .. } = expected;
    let exp = match claims.get("exp") {
        Some(Value::Number(n)) => n.as_u64().filter(|exp| *exp <= MAX_NUMERIC_DATE),
        _ => None,
    };
    let exp = exp.ok_or(JwtError::BadClaims("exp is missing or not an integer date"))?;
    if now >= exp.saturating_add(leeway) {
        return Err(JwtError::Expired);
    }
    for name in ["nbf", "iat"] {
        if let Some(date) = claims.get(name) {
            let date = numeric_date(date).ok_or(JwtError::BadClaims("nbf or iat is not a date"))?;
            if date > (now + leeway) as f64 {
                return Err(JwtError::NotYetValid);
            }
        }
    }
    if let Some(audience) = expected.audience {
        if !audience_matches(claims.get("aud"), audience) {
            return Err(JwtError::WrongAudience);
        }
    }
    if let Some(issuer) = expected.issuer {
        if claims.get("iss").and_then(Value::as_str) != Some(issuer) {
            return Err(JwtError::WrongIssuer);
        }
    }
    if let Some(sub) = claims.get("sub") {
        let ok = sub
            .as_str()
            .is_some_and(|sub| !sub.is_empty() && sub.len() <= MAX_SUB_BYTES);
        if !ok {
            return Err(JwtError::BadClaims("sub is not a short non-empty string"));
        }
    }
    Ok(exp)
}

/// A NumericDate: a non-negative number no later than [`MAX_NUMERIC_DATE`].
fn numeric_date(value: &Value) -> Option<f64> {
    let date = value.as_number().and_then(Number::as_f64)?;
    (0.0..=MAX_NUMERIC_DATE as f64)
        .contains(&date)
        .then_some(date)
}

/// `aud` is `audience`, or a non-empty array of strings holding it.
fn audience_matches(aud: Option<&Value>, audience: &str) -> bool {
    match aud {
        Some(Value::String(aud)) => aud == audience,
        Some(Value::Array(auds)) => {
            !auds.is_empty()
                && auds.iter().all(Value::is_string)
                && auds.iter().any(|aud| aud == audience)
        }
        _ => false,
    }
}

/// A JSON value parsed with duplicate object keys refused at any depth.
struct Strict(Value);

impl<'de> Deserialize<'de> for Strict {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(StrictVisitor).map(Strict)
    }
}

struct StrictVisitor;

impl<'de> Visitor<'de> for StrictVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a JSON value without duplicate keys")
    }

    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }

    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::Number(v.into()))
    }

    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::Number(v.into()))
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Value, E> {
        Number::from_f64(v)
            .map(Value::Number)
            .ok_or_else(|| E::custom("a number out of range"))
    }

    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_owned()))
    }

    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }

    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::new();
        while let Some(Strict(item)) = seq.next_element()? {
            items.push(item);
        }
        Ok(Value::Array(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut object = Map::new();
        while let Some(key) = map.next_key::<String>()? {
            let Strict(value) = map.next_value()?;
            if object.insert(key, value).is_some() {
                return Err(de::Error::custom("a duplicate key"));
            }
        }
        Ok(Value::Object(object))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn b64(text: &str) -> String {
        URL_SAFE_NO_PAD.encode(text)
    }

    const HEADER: &str = r#"{"alg":"ES256","kid":"k1"}"#;
    const PAYLOAD: &str = r#"{"sub":"u","exp":2000000000}"#;

    fn token(header: &str, payload: &str) -> String {
        format!("{}.{}.{}", b64(header), b64(payload), b64("sig"))
    }

    /// The variant name of what `parse` said, or "ok".
    fn outcome(token: &str) -> String {
        match parse(token, 1 << 16) {
            Ok(_) => "ok".into(),
            Err(JwtError::Malformed(why)) => format!("malformed: {why}"),
            Err(e) => format!("{e:?}"),
        }
    }

    #[test]
    fn structure_is_strict() {
        let good = token(HEADER, PAYLOAD);
        assert_eq!(outcome(&good), "ok");
        let parsed = parse(&good, 8192).expect("parses");
        assert_eq!(parsed.signature, b"sig");
        assert_eq!(parsed.kid, "k1");
        assert_eq!(parsed.alg, Algorithm::ES256);
        assert_eq!(
            parsed.signing_input,
            format!("{}.{}", b64(HEADER), b64(PAYLOAD)).as_bytes()
        );
        let (h, p) = (b64(HEADER), b64(PAYLOAD));
        let cases = [
            (format!("{h}.{p}"), "malformed: not three segments"),
            (
                format!("{h}.{p}.c2ln.c2ln"),
                "malformed: not three segments",
            ),
            (format!("{h}.{p}.a.b.c"), "malformed: not three segments"),
            (format!("{h}..c2ln"), "malformed: an empty segment"),
            (format!(".{p}.c2ln"), "malformed: an empty segment"),
            (format!("{h}.{p}."), "malformed: an empty segment"),
            (
                format!("{h}.{p}.c2lnAA=="),
                "malformed: not strict base64url",
            ),
            (format!("{h}=.{p}.c2ln"), "malformed: not strict base64url"),
            (format!("{h}.{p}.c2l+"), "malformed: not strict base64url"),
            (format!("{h}.{p}.c2l/"), "malformed: not strict base64url"),
            // "c2lo" is "sih"; "c2m" has non-zero trailing bits ("c2k" would be canonical).
            (format!("{h}.{p}.c2m"), "malformed: not strict base64url"),
            (format!("{h}.{p}.c2 ln"), "malformed: not strict base64url"),
            (format!("{h}.{p}\n.c2ln"), "malformed: not strict base64url"),
            (
                format!("{h}.{}.c2ln", b64("[1]")),
                "malformed: not a JSON object",
            ),
            (
                format!("{h}.{}.c2ln", b64("null")),
                "malformed: not a JSON object",
            ),
            (
                format!("{}.{p}.c2ln", b64("\"x\"")),
                "malformed: not a JSON object",
            ),
            (
                format!("{h}.{}.c2ln", b64("\u{feff}{}")),
                "malformed: not strict JSON",
            ),
            (
                format!("{h}.{}.c2ln", b64(r#"{"sub":"\ud800"}"#)),
                "malformed: not strict JSON",
            ),
        ];
        for (token, expected) in cases {
            assert_eq!(outcome(&token), expected, "{token}");
        }
        let invalid_utf8 = format!("{h}.{}.c2ln", URL_SAFE_NO_PAD.encode(b"{\"s\":\"\xff\"}"));
        assert_eq!(outcome(&invalid_utf8), "malformed: not strict JSON");
    }

    #[test]
    fn the_size_cap_comes_before_decoding() {
        let huge = format!("{}.{}.c2ln", b64(HEADER), "A".repeat(1 << 20));
        let started = std::time::Instant::now();
        assert_eq!(outcome(&huge), "malformed: too large");
        assert!(started.elapsed() < std::time::Duration::from_millis(5));
        // Exactly at the cap is fine.
        let at_cap = token(HEADER, PAYLOAD);
        assert!(parse(&at_cap, at_cap.len()).is_ok());
        assert!(parse(&at_cap, at_cap.len() - 1).is_err());
    }

    #[test]
    fn duplicate_keys_are_refused_at_any_depth() {
        let cases = [
            (r#"{"alg":"ES256","alg":"none","kid":"k1"}"#, PAYLOAD),
            (HEADER, r#"{"sub":"a","sub":"b","exp":2000000000}"#),
            (HEADER, r#"{"exp":2000000000,"x":{"y":1,"y":2}}"#),
            (HEADER, r#"{"exp":2000000000,"x":[{"y":1,"y":1}]}"#),
        ];
        for (header, payload) in cases {
            assert_eq!(
                outcome(&token(header, payload)),
                "malformed: not strict JSON"
            );
        }
    }

    #[test]
    fn deep_nesting_is_refused() {
        let deep = format!(
            r#"{{"exp":2000000000,"x":{}1{}}}"#,
            "[".repeat(200),
            "]".repeat(200)
        );
        assert_eq!(outcome(&token(HEADER, &deep)), "malformed: not strict JSON");
        let nested = format!(
            r#"{{"exp":2000000000,"x":{}1{}}}"#,
            "[".repeat(100),
            "]".repeat(100)
        );
        assert_eq!(outcome(&token(HEADER, &nested)), "ok");
    }

    #[test]
    fn header_parameters() {
        let cases = [
            (r#"{"alg":"none","kid":"k1"}"#, "BadAlgorithm"),
            (r#"{"alg":"None","kid":"k1"}"#, "BadAlgorithm"),
            (r#"{"alg":"NONE","kid":"k1"}"#, "BadAlgorithm"),
            (r#"{"alg":"nOnE","kid":"k1"}"#, "BadAlgorithm"),
            (r#"{"alg":"HS256","kid":"k1"}"#, "BadAlgorithm"),
            (r#"{"alg":"ES256 ","kid":"k1"}"#, "BadAlgorithm"),
            (r#"{"alg":"ES256\u0000","kid":"k1"}"#, "BadAlgorithm"),
            (r#"{"kid":"k1"}"#, "BadAlgorithm"),
            (r#"{"alg":"ES256"}"#, "malformed: no usable kid"),
            (r#"{"alg":"ES256","kid":7}"#, "malformed: no usable kid"),
            (r#"{"alg":"ES256","kid":null}"#, "malformed: no usable kid"),
            (
                r#"{"alg":"ES256","kid":["k1"]}"#,
                "malformed: no usable kid",
            ),
            (r#"{"alg":"ES256","kid":""}"#, "malformed: no usable kid"),
            (
                r#"{"alg":"ES256","kid":"k1","crit":["exp"]}"#,
                "malformed: an unsupported header parameter",
            ),
            (
                r#"{"alg":"ES256","kid":"k1","b64":false}"#,
                "malformed: an unsupported header parameter",
            ),
            (
                r#"{"alg":"ES256","kid":"k1","enc":"A256GCM"}"#,
                "malformed: an unsupported header parameter",
            ),
            (
                r#"{"alg":"ES256","kid":"k1","zip":"DEF"}"#,
                "malformed: an unsupported header parameter",
            ),
            (
                r#"{"alg":"ES256","kid":"k1","cty":"JWT"}"#,
                "malformed: a nested JWT",
            ),
            (
                r#"{"alg":"ES256","kid":"k1","cty":"jwt"}"#,
                "malformed: a nested JWT",
            ),
            (r#"{"alg":"ES256","kid":"k1","cty":"json"}"#, "ok"),
            (r#"{"alg":"ES256","kid":"k1","typ":"anything"}"#, "ok"),
            (r#"{"alg":"ES256","kid":"../../dev/null"}"#, "ok"),
            (
                r#"{"alg":"ES256","kid":"k1","jku":"https://evil.example/jwks","x5u":"https://evil.example/x","jwk":{"kty":"EC"},"x5c":["AAAA"]}"#,
                "ok",
            ),
        ];
        for (header, expected) in cases {
            assert_eq!(outcome(&token(header, PAYLOAD)), expected, "{header}");
        }
        let long_kid = format!(r#"{{"alg":"ES256","kid":"{}"}}"#, "k".repeat(10 * 1024));
        assert_eq!(
            outcome(&token(&long_kid, PAYLOAD)),
            "malformed: no usable kid"
        );
    }

    #[test]
    fn nul_anywhere_in_the_claims_is_refused() {
        for payload in [
            r#"{"sub":"a\u0000b","exp":2000000000}"#,
            r#"{"x\u0000":1,"exp":2000000000}"#,
            r#"{"x":[{"y":"\u0000"}],"exp":2000000000}"#,
        ] {
            assert_eq!(
                outcome(&token(HEADER, payload)),
                "BadClaims(\"NUL in a claim\")"
            );
        }
    }

    fn claims(value: Value) -> Map<String, Value> {
        match value {
            Value::Object(map) => map,
            _ => panic!("an object"),
        }
    }

    const NOW: u64 = 1_800_000_000;

    fn judge(value: Value, audience: Option<&str>, issuer: Option<&str>) -> String {
        let expected = Expected {
            audience,
            issuer,
            now: NOW,
            leeway: 30,
        };
        match check_claims(&claims(value), expected) {
            Ok(_) => "ok".into(),
            Err(JwtError::BadClaims(_)) => "BadClaims".into(),
            Err(e) => format!("{e:?}"),
        }
    }

    #[test]
    fn time_claims() {
        let later = NOW + 600;
        let cases = [
            (json!({"exp": later}), "ok"),
            (json!({"exp": NOW - 10}), "ok"), // within the leeway
            (json!({"exp": NOW - 30}), "Expired"),
            (json!({"exp": NOW - 3600}), "Expired"),
            (json!({}), "BadClaims"),
            (json!({"exp": later.to_string()}), "BadClaims"),
            (json!({"exp": later as f64 + 0.5}), "BadClaims"),
            (json!({"exp": 2e9}), "BadClaims"),
            (json!({"exp": true}), "BadClaims"),
            (json!({"exp": null}), "BadClaims"),
            (json!({"exp": -1}), "BadClaims"),
            (json!({"exp": u64::MAX}), "BadClaims"),
            (json!({"exp": MAX_NUMERIC_DATE + 1}), "BadClaims"),
            (json!({"exp": later, "nbf": NOW + 20}), "ok"),
            (json!({"exp": later, "nbf": NOW + 31}), "NotYetValid"),
            (
                json!({"exp": later, "nbf": (NOW + 20).to_string()}),
                "BadClaims",
            ),
            (json!({"exp": later, "nbf": -5}), "BadClaims"),
            (json!({"exp": later, "iat": NOW as f64 - 0.25}), "ok"),
            (json!({"exp": later, "iat": NOW + 31}), "NotYetValid"),
            (json!({"exp": later, "iat": null}), "BadClaims"),
        ];
        for (value, expected) in cases {
            assert_eq!(judge(value.clone(), None, None), expected, "{value}");
        }
    }

    #[test]
    fn audience_issuer_and_subject() {
        let exp = NOW + 600;
        let aud = Some("api");
        let cases = [
            (json!({"exp": exp, "aud": "api"}), aud, "ok"),
            (json!({"exp": exp, "aud": ["x", "api"]}), aud, "ok"),
            (json!({"exp": exp, "aud": "other"}), aud, "WrongAudience"),
            (json!({"exp": exp, "aud": []}), aud, "WrongAudience"),
            (json!({"exp": exp, "aud": ["api", 1]}), aud, "WrongAudience"),
            (json!({"exp": exp, "aud": {"api": 1}}), aud, "WrongAudience"),
            (json!({"exp": exp}), aud, "WrongAudience"),
            // No audience configured: aud is not looked at.
            (json!({"exp": exp, "aud": 5}), None, "ok"),
            (json!({"exp": exp, "sub": "user_1"}), None, "ok"),
            (json!({"exp": exp, "sub": ""}), None, "BadClaims"),
            (json!({"exp": exp, "sub": 12}), None, "BadClaims"),
            (
                json!({"exp": exp, "sub": "s".repeat(513)}),
                None,
                "BadClaims",
            ),
        ];
        for (value, aud, expected) in cases {
            assert_eq!(judge(value.clone(), aud, None), expected, "{value}");
        }
        let iss = Some("https://issuer.example/");
        assert_eq!(
            judge(
                json!({"exp": exp, "iss": "https://issuer.example/"}),
                None,
                iss
            ),
            "ok"
        );
        assert_eq!(
            judge(
                json!({"exp": exp, "iss": "https://evil.example/"}),
                None,
                iss
            ),
            "WrongIssuer"
        );
        assert_eq!(judge(json!({"exp": exp}), None, iss), "WrongIssuer");
        // Cognito's escaped slashes are the same string once parsed.
        let escaped =
            object(br#"{"exp":2000000000,"iss":"https:\/\/issuer.example\/"}"#).expect("parses");
        let expected = Expected {
            audience: None,
            issuer: iss,
            now: NOW,
            leeway: 30,
        };
        assert!(check_claims(&escaped, expected).is_ok());
    }
}
