//! JSON encoding and decoding of `Payload`s, the language-neutral values that
//! carry task arguments and results.

use conveyor_api::pb;
use serde::Serialize;
use serde::de::DeserializeOwned;

/// Content type of every payload this SDK encodes.
pub const JSON_CONTENT_TYPE: &str = "application/json";

/// Encodes `value` as a JSON payload.
pub fn to_payload<T: Serialize + ?Sized>(value: &T) -> Result<pb::Payload, serde_json::Error> {
    Ok(pb::Payload {
        data: serde_json::to_vec(value)?,
        content_type: JSON_CONTENT_TYPE.to_owned(),
    })
}

/// Decodes a JSON payload into `T`.
///
/// An empty content type counts as JSON (the proto's default); any other
/// non-JSON content type is refused rather than misread. The error is a
/// human-readable reason.
pub fn from_payload<T: DeserializeOwned>(payload: &pb::Payload) -> Result<T, String> {
    if !is_json(&payload.content_type) {
        return Err(format!(
            "content type {:?} is not json",
            payload.content_type
        ));
    }
    serde_json::from_slice(&payload.data).map_err(|error| error.to_string())
}

/// True for the empty content type, `application/json` and its variants with
/// parameters (`application/json; charset=utf-8`) or a structured suffix
/// (`application/problem+json`).
pub fn is_json(content_type: &str) -> bool {
    let media_type = content_type
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    media_type.is_empty() || media_type == JSON_CONTENT_TYPE || media_type.ends_with("+json")
}

/// Decodes an optional payload; an absent one reads as JSON `null`, so that
/// `()` and `Option<T>` decode from a task that returned nothing.
pub(crate) fn from_optional_payload<T: DeserializeOwned>(
    payload: Option<&pb::Payload>,
) -> Result<T, String> {
    match payload {
        Some(payload) if !payload.data.is_empty() || !is_json(&payload.content_type) => {
            from_payload(payload)
        }
        _ => serde_json::from_value(serde_json::Value::Null).map_err(|error| error.to_string()),
    }
}

/// Converts a std duration to its protobuf form, saturating at the largest
/// value protobuf allows (about 10,000 years) instead of failing.
pub(crate) fn duration_to_proto(duration: std::time::Duration) -> prost_types::Duration {
    const MAX_SECONDS: u64 = 315_576_000_000;
    if duration.as_secs() > MAX_SECONDS {
        return prost_types::Duration {
            seconds: MAX_SECONDS as i64,
            nanos: 0,
        };
    }
    prost_types::Duration {
        seconds: duration.as_secs() as i64,
        nanos: duration.subsec_nanos() as i32,
    }
}

/// Converts a protobuf duration to std; absent, zero or negative is `None`.
pub(crate) fn duration_from_proto(
    duration: Option<&prost_types::Duration>,
) -> Option<std::time::Duration> {
    let duration = std::time::Duration::try_from(*duration?).ok()?;
    (!duration.is_zero()).then_some(duration)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn round_trips_json() {
        let payload = to_payload(&json!({"a": [1, 2.5, "x"]})).expect("encodes");
        assert_eq!(payload.content_type, "application/json");
        assert_eq!(payload.data, br#"{"a":[1,2.5,"x"]}"#);
        let value: serde_json::Value = from_payload(&payload).expect("decodes");
        assert_eq!(value, json!({"a": [1, 2.5, "x"]}));
    }

    #[test]
    fn recognises_json_content_types() {
        assert!(is_json(""));
        assert!(is_json("application/json"));
        assert!(is_json("Application/JSON; charset=utf-8"));
        assert!(is_json("application/problem+json"));
        assert!(!is_json("application/octet-stream"));
        assert!(!is_json("text/plain"));
    }

    #[test]
    fn refuses_non_json_payloads() {
        let payload = pb::Payload {
            data: b"42".to_vec(),
            content_type: "application/msgpack".into(),
        };
        let error = from_payload::<i64>(&payload).expect_err("not json");
        assert!(error.contains("application/msgpack"), "{error}");
    }

    #[test]
    fn absent_payload_reads_as_null() {
        let unit: () = from_optional_payload(None).expect("unit");
        assert_eq!(unit, ());
        let nothing: Option<i64> = from_optional_payload(None).expect("option");
        assert_eq!(nothing, None);
        assert!(from_optional_payload::<i64>(None).is_err());
        let empty = pb::Payload::default();
        let value: serde_json::Value = from_optional_payload(Some(&empty)).expect("null");
        assert_eq!(value, serde_json::Value::Null);
    }

    #[test]
    fn converts_durations() {
        let proto = duration_to_proto(std::time::Duration::from_millis(1500));
        assert_eq!((proto.seconds, proto.nanos), (1, 500_000_000));
        let huge = duration_to_proto(std::time::Duration::MAX);
        assert_eq!(huge.seconds, 315_576_000_000);
        assert_eq!(
            duration_from_proto(Some(&proto)),
            Some(std::time::Duration::from_millis(1500))
        );
        assert_eq!(duration_from_proto(None), None);
        let zero = prost_types::Duration::default();
        assert_eq!(duration_from_proto(Some(&zero)), None);
        let negative = prost_types::Duration {
            seconds: -1,
            nanos: 0,
        };
        assert_eq!(duration_from_proto(Some(&negative)), None);
    }
}
