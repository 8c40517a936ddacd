"""bevforge.data.synthetic"""
