//! The live dashboard at `/dashboard`: one self-contained HTML page (inline CSS and JS, no
//! outside resources) shipped in the binary. It polls `/api/v1/status` every second and draws
//! its small charts on canvases by hand.

pub const PAGE: &str = include_str!("dashboard.html");
