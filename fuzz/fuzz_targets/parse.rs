//! Message parsing: any record, with any count of fds said to have come with it, parses
//! or is rejected without a panic; what parses encodes back to a record that parses to
//! the same message. Input: byte 0 = fds received (mod 12), the rest = the record.
#![no_main]

use gstqtisocket::protocol::{ReceiverMessage, SenderMessage};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&fds, record)) = data.split_first() else { return };
    let fds = fds as usize % 12;
    if let Ok(message) = SenderMessage::parse(record, fds) {
        let encoded = message.encode();
        let again = SenderMessage::parse(&encoded, fds).expect("what parsed, encoded, parses again");
        assert_eq!(again, message, "encode/parse round trip");
    }
    if let Ok(message) = ReceiverMessage::parse(record, fds) {
        let again = ReceiverMessage::parse(&message.encode(), fds).expect("a return, encoded, parses again");
        assert_eq!(again, message);
    }
});
