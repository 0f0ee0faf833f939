//! agent (under construction)
