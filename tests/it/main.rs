//! The integration binary: drives the `anytime` CLI as a user would.
//!
//! - `infer`: golden logits on the reference fixtures, through the binary;
//! - `flops`: the reference counter's numbers and the published ones;
//! - `bad_input`: every bad input gives exit code 1 and one `error:` line,
//!   never a panic;
//! - `reliability`: issue 22's classes of bad input, one test each;
//! - `resume`: a training run killed with SIGKILL at random moments resumes
//!   to the same weights as an uninterrupted run, in the first stage of a
//!   recipe and in a later one with a frozen group and a stochastic
//!   objective;
//! - `scan`: SCAN's parity, costs and configuration errors through the CLI;
//! - `gfnet`: GFNet's step loop (logits, actions, patch coordinates) against
//!   the reference, its per-step costs and configuration errors;
//! - `swa`: the weight-averaging stage;
//! - `fold`: the fused inference path (batch norms folded into the
//!   convolutions) against the layer-by-layer one on every shipped model;
//! - `folders`: an official checkpoint classifying a folder of photographs
//!   (checked against torchvision's preprocessing), image folders streamed by
//!   `eval` and `calibrate`, shards merged into the unsharded run;
//! - `install`: the binary copied into a temporary root, run from an empty
//!   directory; `download`: weights from a local stand-in for the hub.

mod util;

mod adaptive;
mod bad_input;
mod data;
mod download;
mod flops;
mod fold;
mod folders;
mod gfnet;
mod hub;
mod infer;
mod install;
mod reliability;
mod resume;
mod scan;
mod swa;
