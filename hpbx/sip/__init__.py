"""The SIP server core: transports, transactions, registrar, digest auth, NAT handling."""
