//! What a backend sends, as the gateway reads it: messages framed by `frame::frame_length`
//! (the check every read from a backend goes through) and parsed by postgres-protocol, then
//! consumed the way the gateway does (ErrorResponse by `DbError::parse`, RowDescription by
//! `query::types::fields`, DataRow and CommandComplete rendered to the driver's JSON by
//! `query::json::write_result`, in raw and typed mode, with the column types of the OIDs the
//! backend named).
//!
//! Input: one byte picking the message size limit and the output mode, then the stream.
//!
//! Checks: framing and parsing agree (a whole frame parses to exactly one message of its
//! length; nothing larger than the limit is ever parsed); every rendered result is one valid
//! JSON value, unless a json/jsonb column embeds what the backend sent as it is.
#![no_main]

use bytes::BytesMut;
use fallible_iterator::FallibleIterator;
use gateway::fuzzing::frame::{frame_length, FrameError};
use gateway::fuzzing::query::json::{self, OutputMode};
use gateway::fuzzing::query::types::{self, JsonKind, TypeMap};
use gateway::fuzzing::query::StatementResult;
use gateway::fuzzing::DbError;
use gateway_fuzz::is_json;
use libfuzzer_sys::fuzz_target;
use postgres_protocol::message::backend::Message;

fuzz_target!(|data: &[u8]| {
    let Some((&seed, stream)) = data.split_first() else {
        return;
    };
    let max = [64 * 1024 * 1024, 5, 64, 4096][usize::from(seed & 3)];
    let mode = OutputMode {
        raw_text: seed & 4 != 0,
        array_mode: seed & 8 != 0,
    };
    let mut buf = BytesMut::from(stream);
    let mut result = StatementResult::default();
    loop {
        let total = match frame_length(&buf, max) {
            Ok(Some(total)) if buf.len() >= total => total,
            Ok(_) => break,
            Err(FrameError::TooLarge { len, max: m }) => {
                assert!(len > m && m == max);
                break;
            }
            Err(FrameError::InvalidLength) => break,
        };
        let declared = u32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]) as usize;
        assert!(declared >= 4 && declared < max && total == declared + 1);
        let before = buf.len();
        let message = match Message::parse(&mut buf) {
            Ok(Some(message)) => message,
            Ok(None) => panic!("a whole frame of {total} bytes did not parse"),
            Err(_) => break,
        };
        assert_eq!(before - buf.len(), total, "one frame, one message");
        consume(message, &mut result, mode);
    }
    if !result.fields.is_empty() || !result.rows.is_empty() {
        render(&result, mode);
    }
});

fn consume(message: Message, result: &mut StatementResult, mode: OutputMode) {
    match message {
        Message::ErrorResponse(body) => {
            let _ = DbError::parse(&body).map(|e| (e.is_fatal(), e.is_server_going_away()));
        }
        Message::NoticeResponse(body) => {
            let _ = body.fields().count();
        }
        Message::ParameterStatus(body) => {
            let _ = (body.name(), body.value());
        }
        Message::BackendKeyData(body) => {
            let _ = (body.process_id(), body.secret_key());
        }
        Message::ReadyForQuery(body) => {
            let _ = body.status();
        }
        Message::RowDescription(body) => {
            if let Ok(fields) = types::fields(&body) {
                result.fields = fields;
            }
        }
        Message::DataRow(row) => {
            let _ = row.ranges().count();
            result.rows.push(row);
        }
        Message::CommandComplete(body) => {
            if let Ok(tag) = body.tag() {
                let (_command, _rows) = json::split_tag(Some(tag));
                result.tag = Some(tag.to_owned());
            }
            render(result, mode);
            *result = StatementResult::default();
        }
        Message::AuthenticationSasl(body) => {
            let _ = body.mechanisms().count();
        }
        Message::AuthenticationSaslContinue(body) => {
            let _ = body.data();
        }
        Message::AuthenticationSaslFinal(body) => {
            let _ = body.data();
        }
        Message::AuthenticationMd5Password(body) => {
            let _ = body.salt();
        }
        Message::ParameterDescription(body) => {
            let _ = body.parameters().count();
        }
        _ => {}
    }
}

fn render(result: &StatementResult, mode: OutputMode) {
    let types: TypeMap = result
        .fields
        .iter()
        .filter_map(|f| Some((f.type_oid, types::builtin(f.type_oid)?)))
        .collect();
    let mut out = Vec::new();
    if json::write_result(&mut out, result, mode, &types, usize::MAX).is_err() {
        panic!("no limit, no TooLarge");
    }
    let embeds_json = !mode.raw_text && types.values().any(|t| t.kind == JsonKind::Json);
    assert!(
        embeds_json || is_json(&out),
        "not JSON: {}",
        String::from_utf8_lossy(&out)
    );
}
