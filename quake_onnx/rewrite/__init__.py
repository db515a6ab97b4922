"""The rewrite pass: finds exponential non-linearities and replaces them with com.quake nodes."""
