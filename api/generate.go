package api

//go:generate bash ../.ci/protogen
