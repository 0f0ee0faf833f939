//! sources (under construction)
