//! provisioners (under construction)
