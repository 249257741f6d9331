//! Feeds arbitrary chunk/gap/close sequences in both directions to the MySQL / MariaDB client
//! parser (`tracer_protocol::db::DbConn`); the checks are `tracer_fuzz::drive_db`'s.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tracer_protocol::db::DbConn;

fuzz_target!(|input: &[u8]| tracer_fuzz::drive_db(DbConn::mysql(), input));
