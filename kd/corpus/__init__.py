"""The built-in synthetic speech corpus: sentence text, eSpeak NG audio, data dirs."""
