"""Likelihood estimators shared by every model: exact enumeration, AIS, importance sampling, Parzen."""
