"""Identity and access: the device registry, logins, certificates, firmware signatures, and
the broker policy the auth endpoints answer from.
"""
