// A binary of its own: these runs are compared bit for bit, which needs the process to themselves.
//! rlhf-dpo's tests that compare runs bit for bit, in one binary: KTO, EXO-rw on K = 3 groups and
//! exact resume, and online DPO, each with its SIGKILL crash test; and the offline trainer's
//! dropout, which draws from burn's generator. The tests that train take `rlhf_testkit::serial()`,
//! so they run one at a time.

mod dropout;
mod kto;
mod kwise_and_resume;
mod online;
