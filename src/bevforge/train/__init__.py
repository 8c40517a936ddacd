"""bevforge.train"""
