//! The DNS wire format, through hickory-proto: reading a workload's query, building the
//! resolver's own answers (REFUSED, SERVFAIL, FORMERR), checking an upstream response against
//! the query it answers, and reading the addresses it gives.

use hickory_proto::{
    op::{Message, MessageType, OpCode, Query, ResponseCode},
    rr::{Name, RData},
};
use std::{collections::HashSet, net::IpAddr};

/// A workload's query, as far as the resolver needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Question {
    /// The message id the workload chose.
    pub id: u16,
    /// The one question.
    pub query: Query,
    /// Whether the workload asked for recursion (echoed in our own answers).
    pub recursion_desired: bool,
}

/// Why a query gets no forwarding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Malformed {
    /// Too short to carry even an id: dropped without answer.
    Unanswerable,
    /// Answer this id with this code.
    Answer(u16, ResponseCode),
}

/// Reads a workload query: a standard query with exactly one question.
pub fn read_query(bytes: &[u8]) -> Result<Question, Malformed> {
    let id = match bytes {
        [a, b, ..] if bytes.len() >= 12 => u16::from_be_bytes([*a, *b]),
        _ => return Err(Malformed::Unanswerable),
    };
    let msg = Message::from_vec(bytes).map_err(|_| Malformed::Answer(id, ResponseCode::FormErr))?;
    if msg.metadata.message_type != MessageType::Query {
        // A response sent to the resolver is nobody's question.
        return Err(Malformed::Unanswerable);
    }
    if msg.metadata.op_code != OpCode::Query {
        return Err(Malformed::Answer(id, ResponseCode::NotImp));
    }
    let [query] = msg.queries.as_slice() else {
        return Err(Malformed::Answer(id, ResponseCode::FormErr));
    };
    Ok(Question {
        id,
        query: query.clone(),
        recursion_desired: msg.metadata.recursion_desired,
    })
}

/// The resolver's own answer to `q`: no records, code `code`.
pub fn answer(q: &Question, code: ResponseCode) -> Vec<u8> {
    let mut msg = Message::error_msg(q.id, OpCode::Query, code);
    msg.metadata.recursion_desired = q.recursion_desired;
    msg.metadata.recursion_available = true;
    msg.add_query(q.query.clone());
    msg.to_vec().unwrap_or_else(|_| bare(q.id, code))
}

/// An answer with only a header, for queries that could not be read.
pub fn bare(id: u16, code: ResponseCode) -> Vec<u8> {
    let mut out = vec![0u8; 12];
    out[..2].copy_from_slice(&id.to_be_bytes());
    // QR=1, opcode QUERY; RA=1 and the low four bits of the code.
    out[2] = 0x80;
    out[3] = 0x80 | (u16::from(code) & 0x0f) as u8;
    out
}

/// An upstream response that answers the question we sent.
#[derive(Debug)]
pub struct Response {
    /// The parsed message.
    pub message: Message,
}

/// Checks that `bytes` is a response with id `id` to exactly `query`; `None` for anything else
/// (spoofed, stale, or garbled), which the caller drops.
pub fn read_response(bytes: &[u8], id: u16, query: &Query) -> Option<Response> {
    let message = Message::from_vec(bytes).ok()?;
    let m = &message.metadata;
    if m.id != id || m.message_type != MessageType::Response {
        return None;
    }
    // Name comparison in hickory is case-insensitive, as DNS names are.
    let [got] = message.queries.as_slice() else {
        return None;
    };
    if got.name != query.name
        || got.query_type != query.query_type
        || got.query_class != query.query_class
    {
        return None;
    }
    Some(Response { message })
}

impl Response {
    /// The A and AAAA answers for `name` and every name its CNAME chain leads to, with their
    /// TTLs. Records for names outside the chain are ignored: only what answers the question
    /// becomes a permit.
    pub fn addresses(&self, name: &Name) -> Vec<(IpAddr, u32)> {
        let answers = &self.message.answers;
        let mut chain: HashSet<Name> = HashSet::new();
        chain.insert(name.to_lowercase());
        // Each pass adds at least one link or stops; a chain is never longer than the answers.
        for _ in 0..answers.len() {
            let mut grew = false;
            for r in answers {
                if let RData::CNAME(target) = &r.data {
                    if chain.contains(&r.name.to_lowercase())
                        && chain.insert(target.0.to_lowercase())
                    {
                        grew = true;
                    }
                }
            }
            if !grew {
                break;
            }
        }
        answers
            .iter()
            .filter(|r| chain.contains(&r.name.to_lowercase()))
            .filter_map(|r| match &r.data {
                RData::A(a) => Some((IpAddr::V4(a.0), r.ttl)),
                RData::AAAA(a) => Some((IpAddr::V6(a.0), r.ttl)),
                _ => None,
            })
            .collect()
    }
}

/// Gives a message another id (the first two bytes), as a forwarder must in both directions.
pub fn set_id(bytes: &mut [u8], id: u16) {
    if bytes.len() >= 2 {
        bytes[..2].copy_from_slice(&id.to_be_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hickory_proto::rr::{
        rdata::{A, AAAA, CNAME},
        Record, RecordType,
    };
    use std::str::FromStr;

    fn name(s: &str) -> Name {
        Name::from_str(s).expect("name")
    }

    fn query_bytes(id: u16, n: &str, t: RecordType) -> Vec<u8> {
        let mut m = Message::new(id, MessageType::Query, OpCode::Query);
        m.metadata.recursion_desired = true;
        m.add_query(Query::query(name(n), t));
        m.to_vec().expect("encode")
    }

    #[test]
    fn reads_a_query_and_refuses_it() {
        let q = read_query(&query_bytes(7, "Evil.Test.", RecordType::A)).expect("query");
        assert_eq!(q.id, 7);
        let refused = Message::from_vec(&answer(&q, ResponseCode::Refused)).expect("decode");
        assert_eq!(refused.metadata.id, 7);
        assert_eq!(refused.metadata.response_code, ResponseCode::Refused);
        assert_eq!(refused.queries.len(), 1);
        assert_eq!(read_query(&[1, 2, 3]), Err(Malformed::Unanswerable));
        let garbage = [0u8, 9, 1, 0, 0, 5, 0, 0, 0, 0, 0, 0, 1];
        assert_eq!(
            read_query(&garbage),
            Err(Malformed::Answer(9, ResponseCode::FormErr))
        );
        let b = Message::from_vec(&bare(9, ResponseCode::ServFail)).expect("decode");
        assert_eq!(b.metadata.response_code, ResponseCode::ServFail);
    }

    #[test]
    fn responses_must_match_id_and_question() {
        let q = Query::query(name("a.test."), RecordType::A);
        let mut m = Message::response(5, OpCode::Query);
        m.add_query(Query::query(name("A.TEST."), RecordType::A));
        let bytes = m.to_vec().expect("encode");
        assert!(read_response(&bytes, 5, &q).is_some());
        assert!(read_response(&bytes, 6, &q).is_none());
        let other = Query::query(name("b.test."), RecordType::A);
        assert!(read_response(&bytes, 5, &other).is_none());
        let aaaa = Query::query(name("a.test."), RecordType::AAAA);
        assert!(read_response(&bytes, 5, &aaaa).is_none());
    }

    #[test]
    fn addresses_follow_the_cname_chain_only() {
        let mut m = Message::response(1, OpCode::Query);
        m.add_query(Query::query(name("www.test."), RecordType::A));
        m.add_answer(Record::from_rdata(
            name("www.test."),
            60,
            RData::CNAME(CNAME(name("edge.cdn.test."))),
        ));
        m.add_answer(Record::from_rdata(
            name("edge.cdn.test."),
            30,
            RData::A(A::new(127, 0, 0, 9)),
        ));
        m.add_answer(Record::from_rdata(
            name("edge.cdn.test."),
            30,
            RData::AAAA(AAAA::from_str("::1").expect("v6")),
        ));
        m.add_answer(Record::from_rdata(
            name("unrelated.test."),
            30,
            RData::A(A::new(10, 0, 0, 1)),
        ));
        let bytes = m.to_vec().expect("encode");
        let r = read_response(&bytes, 1, &Query::query(name("WWW.test."), RecordType::A))
            .expect("matches");
        let got = r.addresses(&name("WWW.test."));
        assert_eq!(
            got,
            vec![
                ("127.0.0.9".parse().expect("ip"), 30),
                ("::1".parse().expect("ip"), 30)
            ]
        );
    }
}
