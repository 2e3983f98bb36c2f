//! Golden tests over every line of every capture of the deployed peers (tests/data):
//! the parser reads the expected values, and encoding what it parsed gives back the
//! captured bytes.

mod common;

use common::capture;
use gstqtisocket::protocol::*;

struct Line {
    len: Vec<u8>,
    record: Vec<u8>,
    n_fds: usize,
    fd_sizes: Vec<u64>,
    first8: Option<u64>,
}

/// The lines of a capture that carry a record (hang-up markers are counted apart).
fn load(name: &str) -> (Vec<Line>, usize) {
    let text = std::fs::read_to_string(capture(name)).unwrap();
    let mut lines = vec![];
    let mut hangups = 0;
    for l in text.lines() {
        let v: serde_json::Value = serde_json::from_str(l).unwrap();
        if v["hangup"] == true {
            hangups += 1;
            continue;
        }
        let hex = |k: &str| v[k].as_str().map(|s| hex::decode(s).unwrap());
        lines.push(Line {
            len: hex("len").unwrap(),
            record: hex("record").unwrap(),
            n_fds: v["n_fds"].as_u64().unwrap_or(0) as usize,
            fd_sizes: v["fd_sizes"].as_array().map_or(vec![], |a| a.iter().map(|s| s.as_u64().unwrap()).collect()),
            first8: hex("first8").filter(|b| b.len() == 8).map(|b| u64::from_le_bytes(b.try_into().unwrap())),
        });
    }
    (lines, hangups)
}

/// Parses a sender capture, checks framing and round trip, returns the data messages.
fn data_messages(name: &str) -> Vec<DataMessage> {
    let (lines, _) = load(name);
    let mut messages = vec![];
    for (i, line) in lines.iter().enumerate() {
        assert_eq!(parse_length_record(&line.len), Ok(line.record.len()), "{name}:{i} length record");
        let parsed = SenderMessage::parse(&line.record, line.n_fds).unwrap_or_else(|e| panic!("{name}:{i}: {e}"));
        assert_eq!(parsed.encode(), line.record, "{name}:{i}: re-encoding changed the bytes");
        match parsed {
            SenderMessage::Eos => assert_eq!(i, lines.len() - 1, "{name}: EOS must come last"),
            SenderMessage::Data(m) => {
                let i = i as u64;
                assert_eq!(
                    (m.info.pts, m.info.dts, m.info.duration),
                    (i * 100_000_000 / 3, CLOCK_TIME_NONE, 33_333_333)
                );
                assert_eq!(m.n_fds.unwrap_or(0), line.n_fds);
                for (block, size) in m.blocks.iter().zip(&line.fd_sizes) {
                    assert_eq!(block.maxsize(), *size, "{name}:{i}: maxsize is the object's size");
                }
                if let Some(index) = line.first8 {
                    assert_eq!(index, i, "{name}:{i}: the memory holds the buffer index");
                }
                messages.push(m);
            }
        }
    }
    assert!(
        matches!(SenderMessage::parse(&lines.last().unwrap().record, 0), Ok(SenderMessage::Eos)),
        "{name} ends with EOS"
    );
    messages
}

fn buf_ids(messages: &[DataMessage]) -> Vec<i32> {
    messages.iter().map(|m| m.buf_ids()[0]).collect()
}

fn assert_nv12_64x48(m: &DataMessage) {
    let [MemoryBlock::Frame(f)] = m.blocks.as_slice() else { panic!("one FRAME expected: {:?}", m.blocks) };
    assert_eq!((f.width, f.height, f.format, f.flags), (64, 48, 23, 0));
    assert_eq!((f.planes_offsets(), f.planes_strides()), (&[0, 3072][..], &[64, 64][..]));
    assert_eq!((f.size, f.maxsize), (4608, 4608));
}

#[test]
fn pooled_video() {
    let m = data_messages("video-pool.jsonl");
    assert_eq!(buf_ids(&m), [7, 8, 9, 11, 7, 8, 9, 11]);
    assert!(m.iter().all(|m| m.info.use_buffer_pool));
    assert_eq!(
        m.iter().map(|m| m.n_fds).collect::<Vec<_>>(),
        [Some(1), Some(1), Some(1), Some(1), None, None, None, None]
    );
    m.iter().for_each(assert_nv12_64x48);
}

#[test]
fn unpooled_video() {
    let m = data_messages("video-nopool.jsonl");
    assert_eq!(buf_ids(&m), [6, 7, 8, 9, 11]);
    assert!(m.iter().all(|m| !m.info.use_buffer_pool && m.n_fds == Some(1)));
    m.iter().for_each(assert_nv12_64x48);
}

#[test]
fn video_with_regions_of_interest() {
    let m = data_messages("video-roi.jsonl");
    assert_eq!(buf_ids(&m), [6, 7, 8]);
    for (i, m) in m.iter().enumerate() {
        assert_nv12_64x48(m);
        let [roi] = m.metas.roi.as_slice() else { panic!("one ROI meta expected") };
        assert_eq!(roi.label.to_str().unwrap(), "person");
        assert_eq!((roi.id, roi.parent_id, roi.x, roi.y, roi.w, roi.h), (i as i32, -1, 10, 20, 30, 40));
        assert_eq!(
            roi.det_meta.as_deref().unwrap().to_str().unwrap(),
            "ObjectDetection, confidence=(double)87.5, color=(uint)4278190335;"
        );
        assert_eq!(roi.xtraparams, None);
        assert!(m.metas.class.is_empty() && m.metas.landmarks.is_empty() && m.metas.protection.is_empty());
    }
}

#[test]
fn tensors() {
    for (name, ids, pooled) in
        [("tensor.jsonl", &[6, 7, 8, 9][..], false), ("tensor-pool.jsonl", &[7, 8, 9, 11, 7, 8][..], true)]
    {
        let m = data_messages(name);
        assert_eq!(buf_ids(&m), ids, "{name}");
        for m in &m {
            assert_eq!(m.info.use_buffer_pool, pooled);
            let [MemoryBlock::Tensor(t)] = m.blocks.as_slice() else { panic!("one TENSOR expected") };
            assert_eq!(TensorType::from_u32(t.tensor_type), Some(TensorType::Uint8));
            assert_eq!(t.used_dimensions(), [1, 4, 4, 3]);
            assert_eq!((t.size, t.maxsize), (48, 48));
        }
    }
}

#[test]
fn text() {
    let m = data_messages("text.jsonl");
    assert_eq!(buf_ids(&m), [-1; 4]);
    for (i, m) in m.iter().enumerate() {
        assert_eq!(m.n_fds, None);
        let [MemoryBlock::Text(t)] = m.blocks.as_slice() else { panic!("one TEXT expected") };
        assert_eq!(t.contents, format!("frame {i}").into_bytes());
        assert_eq!(t.maxsize, 7);
    }
}

/// What the deployed receiver answered: returns of one buf_id each, a DISCONNECT, and a
/// late return. Unused buf_id entries are garbage, so only the meaningful prefix is
/// compared after re-encoding.
#[test]
fn returns_from_the_deployed_receiver() {
    for (name, expected_hangups) in [("returns-after-eos.jsonl", 2), ("returns-on-stop.jsonl", 0)] {
        let (lines, hangups) = load(name);
        assert_eq!(hangups, expected_hangups, "{name}");
        let mut said = vec![];
        for line in &lines {
            assert_eq!(parse_length_record(&line.len), Ok(line.record.len()));
            let message = ReceiverMessage::parse(&line.record, 0).unwrap();
            let encoded = message.encode();
            assert_eq!(encoded.len(), line.record.len());
            match message {
                ReceiverMessage::Disconnect => {
                    assert_eq!(encoded, line.record);
                    said.push(0);
                }
                ReceiverMessage::Return(r) => {
                    assert_eq!(r.buf_ids().len(), 1);
                    assert_eq!(encoded[..16], line.record[..16], "{name}: FD_COUNT, identity and buf_id");
                    said.push(r.buf_ids()[0]);
                }
            }
        }
        assert_eq!(said, [7, 8, 9, 11, 7, 8, 9, 0, 11], "{name}: returns, DISCONNECT (0), late return");
    }
}

/// One byte changed in a real message breaks exactly the rule it should.
#[test]
fn flipped_captures_break_the_rule_they_should() {
    let (lines, _) = load("video-nopool.jsonl");
    let base = &lines[0].record; // FD_COUNT @0, BUFFER_INFO @8, FRAME @80
    let with = |offset: usize, bytes: &[u8]| {
        let mut r = base.clone();
        r[offset..offset + bytes.len()].copy_from_slice(bytes);
        SenderMessage::parse(&r, 1).unwrap_err()
    };
    assert!(matches!(with(80, &99u32.to_le_bytes()), ProtocolError::UnknownIdentity { identity: 99, offset: 80 }));
    assert!(matches!(with(80 + 16, &5u32.to_le_bytes()), ProtocolError::PlaneCountOutOfRange { n_planes: 5 }));
    assert!(matches!(with(80 + 28, &4608u64.to_le_bytes()), ProtocolError::PlaneOffsetOutsideSize { plane: 1, .. }));
    assert!(matches!(with(80 + 72, &5000u64.to_le_bytes()), ProtocolError::SizeOverMaxsize { .. }));
    assert!(matches!(with(4, &11i32.to_le_bytes()), ProtocolError::FdCountOutOfRange { n_fds: 11 }));
    assert!(matches!(SenderMessage::parse(base, 0), Err(ProtocolError::FdCountMismatch { announced: 1, received: 0 })));
    assert!(matches!(
        SenderMessage::parse(&base[..base.len() - 4], 1),
        Err(ProtocolError::PayloadPastRecord { identity: Identity::Frame, .. })
    ));
    assert!(matches!(parse_length_record(&[0, 0, 0]), Err(ProtocolError::LengthRecordSize { got: 3 })));
}
