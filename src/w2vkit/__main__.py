from w2vkit.cli import main

raise SystemExit(main())
