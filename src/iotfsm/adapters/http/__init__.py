"""HTTP: the platform's file service, log endpoint and broker-auth endpoints; the device's
transfers and log upload; the policy on which URLs a device follows.
"""
