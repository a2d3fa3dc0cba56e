//! Arbitrary bytes → the HTTP/1.1 server codec, as a client connection feeds it: request heads
//! (`parse_head`, 8 KiB limit), then each body through `Framing::step_counting` (length or
//! chunked, trailers), then the next pipelined request, with the input arriving in pieces as
//! long as its first byte says (0: all at once). `server::h1::fuzz_request` does the driving and
//! checks: a head consumes input and at most the limit, an incomplete one consumes nothing, a
//! refusal is 400/431/505, and a body yields no more than it read or declared.
//! Must never panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| sluice::server::h1::fuzz_request(data));
