//! Fuzz target: the control protocol decoder must accept or reject any
//! line without panicking, and what it accepts must re-encode to a line
//! that decodes to the same request.
#![no_main]

use libfuzzer_sys::fuzz_target;
use zonit::control::proto;

fuzz_target!(|data: &[u8]| {
    if let Ok(req) = proto::decode(data) {
        let line = proto::encode_request(&req);
        let again = proto::decode(&line[..line.len() - 1]);
        assert_eq!(again.as_ref(), Ok(&req));
    }
});
