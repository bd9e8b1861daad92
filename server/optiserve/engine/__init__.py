"""The request pipeline and the domain types that cross the rpc boundary."""
